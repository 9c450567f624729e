//! The commands tim-gateway knows: `(service, command)` → [`CommandSpec`].
//!
//! The catalogue decides what a client may call (unknown commands are refused unless the
//! config allows pass-through), whether a command is a read or a write, and its documented
//! per-second quota (reference §4 and §5). Lookups borrow the path: no allocation per request.

use rustc_hash::FxHashMap;

/// Whether a command only reads Tencent's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
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
    /// Tencent's documented calls per second for this command, if its page gives one.
    pub quota_per_second: Option<u32>,
    /// Cached by default (reads that are safe to serve from cache).
    pub is_cacheable: bool,
    /// The writes whose success invalidates a cached answer of this read.
    pub invalidated_by: Vec<&'static str>,
    /// Where the entry comes from: Tencent's page for it (or `config` for a command the
    /// configuration added).
    pub source: &'static str,
    pub title: &'static str,
    /// The section of Tencent's list.
    pub section: &'static str,
    /// What the page says beyond "N calls per second", or why there is no quota.
    pub quota_note: Option<&'static str>,
}

/// Tencent's commands as checked in: one entry per command of its "RESTful API List", each
/// with the page it came from (`catalogue/SOURCES.md` says how the list was compiled).
pub const DATA: &str = include_str!("catalogue/commands.toml");

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Data {
    command: Vec<Entry>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    title: String,
    section: String,
    access: Access,
    quota: Option<u32>,
    quota_note: Option<String>,
    source: String,
    #[serde(default)]
    invalidated_by: Vec<String>,
    #[serde(default)]
    cached: bool,
}

/// Every known command, read once from [`DATA`]. Its strings live as long as the process
/// (one copy, however many catalogues are built).
static KNOWN: std::sync::LazyLock<Vec<CommandSpec>> = std::sync::LazyLock::new(|| {
    let data: Data = toml::from_str(DATA).expect("catalogue/commands.toml is valid (tested)");
    let keep = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    data.command
        .into_iter()
        .map(|entry| {
            let name = keep(entry.name);
            let (service, command) = name.split_once('/').expect("service/command (tested)");
            CommandSpec {
                service,
                command,
                name,
                access: entry.access,
                quota_per_second: entry.quota,
                is_cacheable: entry.cached,
                invalidated_by: entry.invalidated_by.into_iter().map(keep).collect(),
                source: keep(entry.source),
                title: keep(entry.title),
                section: keep(entry.section),
                quota_note: entry.quota_note.map(keep),
            }
        })
        .collect()
});

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
    /// Tencent's whole list ([`DATA`]).
    pub fn builtin() -> Self {
        let specs = KNOWN.clone();
        let by_name = specs
            .iter()
            .enumerate()
            .map(|(i, spec)| (spec.name, CommandId(i)))
            .collect();
        Catalogue { specs, by_name }
    }

    /// Tencent's list and, after it, the commands outside it that the configuration names
    /// (`[[throttle.quotas]]`, `[[cache.rules]]` with pass-through allowed), each with its
    /// access: they get lanes, budgets and metrics of their own as catalogue commands do.
    pub fn with_configured<'a>(configured: impl IntoIterator<Item = (&'a str, Access)>) -> Self {
        let mut catalogue = Self::builtin();
        for (name, access) in configured {
            if catalogue.lookup(name).is_some() {
                continue;
            }
            // Once per configured command and config load: bounded by the file.
            let name: &'static str = Box::leak(name.to_owned().into_boxed_str());
            let Some((service, command)) = name.split_once('/') else {
                continue; // the config validated it
            };
            catalogue
                .by_name
                .insert(name, CommandId(catalogue.specs.len()));
            catalogue.specs.push(CommandSpec {
                service,
                command,
                name,
                access,
                quota_per_second: None,
                is_cacheable: false,
                invalidated_by: Vec::new(),
                source: "config",
                title: "",
                section: "Configured",
                quota_note: Some(
                    "outside Tencent's list as the gateway knows it; named by the configuration",
                ),
            });
        }
        catalogue
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

    /// The catalogue as a Markdown table, by section (the README's, and `tim-gateway
    /// catalogue`): command (linked to its page), quota, read or write, cached by default,
    /// invalidated by.
    pub fn markdown(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let mut section = "";
        for (_, spec) in self.iter() {
            if spec.section != section {
                section = spec.section;
                let _ = write!(
                    out,
                    "{}**{section}**\n\n| command | quota /s | access | cached by default | invalidated by |\n|---|---:|---|---|---|\n",
                    if out.is_empty() { "" } else { "\n" }
                );
            }
            let quota = spec
                .quota_per_second
                .map_or_else(|| "none given¹".to_owned(), |q| q.to_string());
            let access = match spec.access {
                Access::Read => "read",
                Access::Write => "write",
            };
            let invalidated_by: Vec<String> = spec
                .invalidated_by
                .iter()
                .map(|w| format!("`{w}`"))
                .collect();
            let _ = writeln!(
                out,
                "| [`{}`]({}) | {quota} | {access} | {} | {} |",
                spec.name,
                spec.source,
                if spec.is_cacheable { "yes" } else { "" },
                invalidated_by.join(", ")
            );
        }
        out
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

    /// The checked-in data: Tencent's whole list (172 commands: 66 reads, 106 writes), unique
    /// names, a page for each, a quota or a note saying why there is none, and
    /// `invalidated_by` naming catalogued writes of reads only.
    #[test]
    fn the_data_file_is_the_whole_list() {
        let catalogue = Catalogue::builtin();
        assert_eq!(catalogue.len(), 172);
        let reads = catalogue
            .iter()
            .filter(|(_, s)| s.access == Access::Read)
            .count();
        assert_eq!(reads, 66);
        assert_eq!(catalogue.by_name.len(), 172, "names are unique");
        for (_, spec) in catalogue.iter() {
            assert!(spec.source.starts_with("https://"), "{}", spec.name);
            assert!(!spec.title.is_empty() && !spec.section.is_empty());
            assert!(
                spec.quota_per_second.is_some() || spec.quota_note.is_some(),
                "{}: neither a quota nor a note",
                spec.name
            );
            assert!(spec.invalidated_by.is_empty() || spec.access == Access::Read);
            for write in &spec.invalidated_by {
                let write = catalogue
                    .lookup(write)
                    .expect("invalidated by a known command");
                assert_eq!(catalogue.spec(write).access, Access::Write, "{}", spec.name);
            }
            assert!(!spec.is_cacheable || spec.access == Access::Read);
        }
        let without: Vec<&str> = catalogue
            .iter()
            .filter(|(_, s)| s.quota_per_second.is_none())
            .map(|(_, s)| s.name)
            .collect();
        assert_eq!(without.len(), 8, "{without:?}");
    }

    /// A sample of quotas and natures, as Tencent's pages give them.
    #[test]
    fn a_sample_matches_tencents_pages() {
        let catalogue = Catalogue::builtin();
        let spec = |name: &str| catalogue.spec(catalogue.lookup(name).expect(name)).clone();
        for (name, quota, access) in [
            ("im_open_login_svc/account_import", Some(200), Access::Write),
            (
                "im_open_login_svc/multiaccount_import",
                Some(100),
                Access::Write,
            ),
            ("im_open_login_svc/account_check", Some(100), Access::Read),
            ("openim/sendmsg", Some(200), Access::Write),
            ("openim/admin_getroammsg", Some(200), Access::Read),
            ("sns/friend_add", Some(200), Access::Write),
            ("sns/friend_get", Some(200), Access::Read),
            ("profile/portrait_get", Some(200), Access::Read),
            ("profile/portrait_set", Some(200), Access::Write),
            (
                "group_open_http_svc/get_appid_group_list",
                Some(1),
                Access::Read,
            ),
            (
                "group_open_http_svc/send_group_msg",
                Some(200),
                Access::Write,
            ),
            ("open_msg_svc/get_history", Some(10), Access::Read),
            ("all_member_push/im_push", Some(1), Access::Write),
            ("all_member_push/im_get_tag", Some(100), Access::Read),
            ("ConfigSvc/GetIPList", Some(200), Access::Read),
            ("openim/c2c_msg_read_receipt", None, Access::Write),
            ("timpush/batch", Some(30), Access::Write),
            ("timpush/get_sched_task", Some(5), Access::Read),
            ("user_search/search", Some(2), Access::Read),
            (
                "openim_robot_http_svc/send_stream_msg",
                Some(200),
                Access::Write,
            ),
        ] {
            let s = spec(name);
            assert_eq!((s.quota_per_second, s.access), (quota, access), "{name}");
        }
        assert!(spec("profile/portrait_get")
            .invalidated_by
            .contains(&"profile/portrait_set"));
        assert!(spec("group_open_http_svc/get_group_member_info")
            .invalidated_by
            .contains(&"group_open_http_svc/add_group_member"));
        let cached: Vec<&str> = catalogue
            .iter()
            .filter(|(_, s)| s.is_cacheable)
            .map(|(_, s)| s.name)
            .collect();
        assert_eq!(cached, ["openim_robot_http_svc/get_all_robots"]);
    }
}
