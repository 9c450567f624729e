//! The commands tim-gateway knows: `(service, command)` → [`CommandSpec`].
//!
//! The catalogue decides what a client may call (unknown commands are refused unless the
//! config allows pass-through), whether a command is a read or a write, and its documented
//! per-second quota (reference §4 and §5). Lookups borrow the path: no allocation per request.

use rustc_hash::FxHashMap;

/// Whether a command only reads Tencent's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads: an empty body means `{}`, a plain GET is accepted, and the cache may keep them.
    Read,
    /// Writes: never cached, never retried once they may have reached Tencent.
    Write,
}

/// What the gateway knows about one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSpec {
    pub service: &'static str,
    pub command: &'static str,
    /// `service/command`, the label used in metrics and logs.
    pub name: &'static str,
    pub access: Access,
    /// Tencent's documented calls per second for this command, if known.
    pub quota_per_second: Option<u32>,
    /// Cached by default (reads that are safe to serve from cache).
    pub is_cacheable: bool,
}

/// Builds a [`CommandSpec`] with its `service/command` name spelled out at compile time.
macro_rules! command {
    ($service:literal / $command:literal, $access:expr, $quota:expr, $cacheable:expr) => {
        CommandSpec {
            service: $service,
            command: $command,
            name: concat!($service, "/", $command),
            access: $access,
            quota_per_second: $quota,
            is_cacheable: $cacheable,
        }
    };
}

/// Every known command.
const KNOWN: &[CommandSpec] = &[
    // Reference §4: the chatbot APIs, 200 calls/s each.
    command!(
        "openim_robot_http_svc" / "get_all_robots",
        Access::Read,
        Some(200),
        true
    ),
    command!(
        "openim_robot_http_svc" / "create_robot",
        Access::Write,
        Some(200),
        false
    ),
    command!(
        "openim_robot_http_svc" / "delete_robot",
        Access::Write,
        Some(200),
        false
    ),
    // Reference §5: read-mostly commands. Only get_all_robots is cached out of the box.
    command!(
        "im_open_login_svc" / "account_check",
        Access::Read,
        Some(100),
        false
    ),
    command!("profile" / "portrait_get", Access::Read, None, false),
    command!(
        "group_open_http_svc" / "get_appid_group_list",
        Access::Read,
        None,
        false
    ),
    command!(
        "group_open_http_svc" / "get_group_info",
        Access::Read,
        None,
        false
    ),
    command!("openconfigsvr" / "getappinfo", Access::Read, None, false),
    command!("ConfigSvc" / "GetIPList", Access::Read, None, false),
    // Reference §5: writes.
    command!(
        "im_open_login_svc" / "account_import",
        Access::Write,
        Some(200),
        false
    ),
    command!(
        "im_open_login_svc" / "multiaccount_import",
        Access::Write,
        Some(100),
        false
    ),
    command!("profile" / "portrait_set", Access::Write, None, false),
    command!("openim" / "sendmsg", Access::Write, None, false),
    command!(
        "group_open_http_svc" / "create_group",
        Access::Write,
        None,
        false
    ),
];

/// Cached reads and the writes whose success invalidates them, unless the config says otherwise.
pub const DEFAULT_INVALIDATIONS: &[(&str, &[&str])] = &[(
    "openim_robot_http_svc/get_all_robots",
    &[
        "openim_robot_http_svc/create_robot",
        "openim_robot_http_svc/delete_robot",
    ],
)];

/// Index of a command in the [`Catalogue`]; cheap to copy into per-request context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CommandId(usize);

impl CommandId {
    /// Position in the catalogue, for per-command tables.
    pub fn index(self) -> usize {
        self.0
    }
}

/// The known commands, looked up by `service/command`.
#[derive(Debug)]
pub struct Catalogue {
    specs: Vec<CommandSpec>,
    /// `service/command` → index into `specs`. Fx, not SipHash: the keys are fixed (ours),
    /// so a client's string costs one cheap hash and a probe; it cannot flood the table.
    by_name: FxHashMap<&'static str, CommandId>,
}

impl Default for Catalogue {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Catalogue {
    /// The built-in catalogue of reference §4–5.
    pub fn builtin() -> Self {
        let specs = KNOWN.to_vec();
        let by_name = specs
            .iter()
            .enumerate()
            .map(|(i, spec)| (spec.name, CommandId(i)))
            .collect();
        Catalogue { specs, by_name }
    }

    /// Finds `service/command` (the path after `/v4/`).
    pub fn lookup(&self, name: &str) -> Option<CommandId> {
        self.by_name.get(name).copied()
    }

    /// Number of known commands; `CommandId::index` is below it.
    pub fn len(&self) -> usize {
        self.specs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    pub fn spec(&self, id: CommandId) -> &CommandSpec {
        &self.specs[id.0]
    }

    /// The spec at catalogue index `index` (see [`CommandId::index`]).
    ///
    /// # Panics
    /// If `index` is not below [`len`](Self::len).
    pub fn spec_at(&self, index: usize) -> &CommandSpec {
        &self.specs[index]
    }

    pub fn iter(&self) -> impl Iterator<Item = (CommandId, &CommandSpec)> {
        self.specs
            .iter()
            .enumerate()
            .map(|(i, s)| (CommandId(i), s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Routing skips the byte check for commands the catalogue knows (`parse_path_known`),
    /// so every name in it must pass that check.
    #[test]
    fn every_name_passes_the_path_check() {
        for (_, spec) in Catalogue::builtin().iter() {
            assert!(crate::route::is_command(spec.name), "{}", spec.name);
        }
    }

    /// The robot commands are known with Tencent's 200/s quota, and only get_all_robots caches.
    #[test]
    fn robot_commands_are_catalogued() {
        let catalogue = Catalogue::builtin();
        let get = catalogue
            .lookup("openim_robot_http_svc/get_all_robots")
            .expect("known");
        let spec = catalogue.spec(get);
        assert_eq!(spec.access, Access::Read);
        assert_eq!(spec.quota_per_second, Some(200));
        assert!(spec.is_cacheable);
        let create = catalogue
            .lookup("openim_robot_http_svc/create_robot")
            .expect("known");
        assert_eq!(catalogue.spec(create).access, Access::Write);
        assert!(!catalogue.spec(create).is_cacheable);
        assert_eq!(
            catalogue.lookup("openim_robot_http_svc/get_all_robot"),
            None
        );
        assert_eq!(
            catalogue.lookup("OPENIM_ROBOT_HTTP_SVC/get_all_robots"),
            None
        );
    }
}
