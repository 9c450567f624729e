//! Tencent's regional domains (reference §2) and the origin a request goes to.
//!
//! An app lives in one region; calling another region's domain fails with 70016/70020. Each
//! region has a backup domain for when the main one cannot be resolved or reached.

use std::fmt;
use std::str::FromStr;

/// A Tencent Cloud Chat data centre.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Region {
    China,
    Singapore,
    Seoul,
    Tokyo,
    Frankfurt,
    SiliconValley,
    Jakarta,
}

impl Region {
    /// Every region, in the order of reference §2.
    pub const ALL: [Region; 7] = [
        Region::China,
        Region::Singapore,
        Region::Seoul,
        Region::Tokyo,
        Region::Frankfurt,
        Region::SiliconValley,
        Region::Jakarta,
    ];

    /// The name used in configuration files.
    pub fn name(self) -> &'static str {
        match self {
            Region::China => "china",
            Region::Singapore => "singapore",
            Region::Seoul => "seoul",
            Region::Tokyo => "tokyo",
            Region::Frankfurt => "frankfurt",
            Region::SiliconValley => "silicon-valley",
            Region::Jakarta => "jakarta",
        }
    }

    /// The main REST API domain.
    pub fn domain(self) -> &'static str {
        match self {
            Region::China => "console.tim.qq.com",
            Region::Singapore => "adminapisgp.im.qcloud.com",
            Region::Seoul => "adminapikr.im.qcloud.com",
            Region::Tokyo => "adminapijpn.im.qcloud.com",
            Region::Frankfurt => "adminapiger.im.qcloud.com",
            Region::SiliconValley => "adminapiusa.im.qcloud.com",
            Region::Jakarta => "adminapiidn.im.qcloud.com",
        }
    }

    /// The backup domain, for when the main one cannot be resolved or reached.
    pub fn backup_domain(self) -> &'static str {
        match self {
            Region::China => "adminapi.my-imcloud.com",
            Region::Singapore => "adminapisgp.my-imcloud.com",
            Region::Seoul => "adminapikr.my-imcloud.com",
            Region::Tokyo => "adminapijpn.my-imcloud.com",
            Region::Frankfurt => "adminapiger.my-imcloud.com",
            Region::SiliconValley => "adminapiusa.my-imcloud.com",
            Region::Jakarta => "adminapiidn.my-imcloud.com",
        }
    }

    /// The main and backup origins of this region, both HTTPS on port 443.
    pub fn origins(self) -> Origins {
        Origins {
            primary: Origin::https(self.domain()),
            backup: Some(Origin::https(self.backup_domain())),
        }
    }
}

/// A region name that is not one of [`Region::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown region {given:?}; expected one of: china, singapore, seoul, tokyo, frankfurt, silicon-valley, jakarta")]
pub struct UnknownRegion {
    pub given: String,
}

impl FromStr for Region {
    type Err = UnknownRegion;

    /// Accepts the configuration names, case-insensitively, with `_` or `-`, and the short
    /// codes of the domains (`sgp`, `kr`, `jpn`, `ger`, `usa`, `idn`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let normalised = s.trim().to_ascii_lowercase().replace('_', "-");
        let region = match normalised.as_str() {
            "china" | "cn" => Region::China,
            "singapore" | "sgp" => Region::Singapore,
            "seoul" | "kr" | "korea" => Region::Seoul,
            "tokyo" | "jpn" | "japan" => Region::Tokyo,
            "frankfurt" | "ger" | "germany" => Region::Frankfurt,
            "silicon-valley" | "siliconvalley" | "usa" => Region::SiliconValley,
            "jakarta" | "idn" | "indonesia" => Region::Jakarta,
            _ => {
                return Err(UnknownRegion {
                    given: s.to_owned(),
                })
            }
        };
        Ok(region)
    }
}

/// Where upstream requests go: scheme and authority, without a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `https://host[:port]` or, for local testing only, `http://host[:port]`.
    base: String,
}

impl Origin {
    pub fn https(authority: &str) -> Self {
        Origin {
            base: format!("https://{authority}"),
        }
    }

    /// Parses an explicit endpoint such as `https://127.0.0.1:9443` (a trailing `/` is allowed).
    ///
    /// # Errors
    /// A message naming what is wrong: the scheme, a missing host, a path, query or credentials.
    pub fn parse(endpoint: &str) -> Result<Self, String> {
        let uri: http::Uri = endpoint
            .parse()
            .map_err(|e| format!("{endpoint:?} is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("https") | Some("http") => {}
            Some(other) => {
                return Err(format!(
                    "scheme {other:?} is not supported; use https (or http for local tests)"
                ))
            }
            None => {
                return Err(format!(
                    "{endpoint:?} has no scheme; write https://{endpoint}"
                ))
            }
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{endpoint:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err("an endpoint must not carry credentials".to_owned());
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!(
                "{endpoint:?} has a path or query; give only scheme://host[:port]"
            ));
        }
        Ok(Origin {
            base: format!("{}://{}", uri.scheme_str().unwrap_or("https"), authority),
        })
    }

    pub fn is_https(&self) -> bool {
        self.base.starts_with("https://")
    }

    /// `scheme://authority`, to which `/v4/...` is appended.
    pub fn as_str(&self) -> &str {
        &self.base
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base)
    }
}

/// An app's upstream: the main origin and, for regions, a backup tried when the main one
/// cannot be connected to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origins {
    pub primary: Origin,
    pub backup: Option<Origin>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every region's name parses back to it, and its domains are the reference's.
    #[test]
    fn region_names_round_trip() {
        for region in Region::ALL {
            assert_eq!(region.name().parse::<Region>(), Ok(region));
            assert!(region.backup_domain().ends_with(".my-imcloud.com"));
        }
        assert_eq!(
            "Silicon_Valley".parse::<Region>(),
            Ok(Region::SiliconValley)
        );
        assert_eq!("sgp".parse::<Region>(), Ok(Region::Singapore));
        assert_eq!(Region::Singapore.domain(), "adminapisgp.im.qcloud.com");
        assert!("mars".parse::<Region>().is_err());
    }

    /// Explicit endpoints: a table of accepted and refused forms.
    #[test]
    fn endpoint_parsing() {
        let ok = [
            ("https://127.0.0.1:9443", "https://127.0.0.1:9443"),
            ("https://127.0.0.1:9443/", "https://127.0.0.1:9443"),
            ("http://[::1]:8000", "http://[::1]:8000"),
            (
                "https://adminapisgp.im.qcloud.com",
                "https://adminapisgp.im.qcloud.com",
            ),
        ];
        for (input, base) in ok {
            assert_eq!(
                Origin::parse(input).map(|o| o.base),
                Ok(base.to_owned()),
                "{input}"
            );
        }
        for bad in [
            "ftp://x",
            "127.0.0.1:9443",
            "https://h/v4",
            "https://u:p@h",
            "https://h/?a=1",
            "",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad}");
        }
    }
}
