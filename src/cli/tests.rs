use super::*;

/// A `serve` command for a valid configuration file in `dir` with `server` lines added; the
/// key comes from a file, so the test does not depend on the process environment.
fn serve_command(dir: &tempfile::TempDir, server: &str) -> Command {
    let key = dir.path().join("key");
    std::fs::write(&key, "k").unwrap();
    let config = dir.path().join("gateway.toml");
    let toml = format!(
        "[server]\n{server}\n[apps.main]\nsdkappid = 1\nregion = \"sgp\"\n\
         secret_key_file = {:?}\n",
        key.display().to_string()
    );
    std::fs::write(&config, toml).unwrap();
    Command::Serve {
        config,
        shutdown_grace: None,
    }
}

/// `serve`'s runtime starts `server.worker_threads` workers, and one per available CPU
/// when the key is unset (issue 8, item 7); one worker is tokio's single-threaded runtime.
#[test]
fn serve_runtime_has_the_configured_worker_threads() {
    use tokio::runtime::RuntimeFlavor;
    let dir = tempfile::tempdir().unwrap();
    let cpus = crate::config::available_cpus();
    let flavor = |workers| match workers {
        1 => RuntimeFlavor::CurrentThread,
        _ => RuntimeFlavor::MultiThread,
    };
    let cases = [
        ("worker_threads = 3", 3),
        ("worker_threads = 2", 2),
        ("worker_threads = 1", 1),
        ("", cpus),
    ];
    for (server, expected) in cases {
        let task = Task::prepare(serve_command(&dir, server), LogFormat::Human);
        assert!(matches!(task, Task::Serve { .. }), "{server}");
        let runtime = task.runtime().build().unwrap();
        assert_eq!(runtime.metrics().num_workers(), expected, "{server}");
        assert_eq!(
            runtime.handle().runtime_flavor(),
            flavor(expected),
            "{server}"
        );
    }
}

/// An invalid `serve` configuration is settled before any runtime work: the task only
/// returns the bad-configuration exit (code 2).
#[test]
fn invalid_serve_config_becomes_a_bad_config_exit() {
    let dir = tempfile::tempdir().unwrap();
    let task = Task::prepare(serve_command(&dir, "worker_threads = 0"), LogFormat::Human);
    assert!(matches!(task, Task::Done(Exit::BadConfig)));
}

/// Regression test for issue 7, F12: the demo's CA lives in a fresh 0700 directory named
/// tim-gateway-demo-…, and dropping it removes the directory with the file.
#[test]
fn demo_ca_lives_in_a_private_directory_removed_on_drop() {
    let ca = DemoCa::write("PEM").unwrap();
    let dir = ca.dir.path().to_owned();
    assert_eq!(ca.path.parent(), Some(dir.as_path()));
    assert_eq!(std::fs::read_to_string(&ca.path).unwrap(), "PEM");
    let name = dir.file_name().unwrap().to_str().unwrap();
    assert!(name.starts_with("tim-gateway-demo-"), "{name}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
    let other = DemoCa::write("PEM").unwrap();
    assert_ne!(other.dir.path(), dir);
    drop(ca);
    assert!(!dir.exists());
}

/// Regression test for issue 7, F12: `--ca-out` pointing at a symlink replaces the link
/// and leaves its target untouched; a plain existing file is replaced whole.
#[cfg(unix)]
#[test]
fn ca_out_replaces_a_symlink_without_following_it() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("victim");
    std::fs::write(&target, "do not touch").unwrap();
    let ca_out = dir.path().join("ca.pem");
    std::os::unix::fs::symlink(&target, &ca_out).unwrap();

    replace_file(&ca_out, "PEM").unwrap();
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "do not touch");
    assert!(!std::fs::symlink_metadata(&ca_out)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read_to_string(&ca_out).unwrap(), "PEM");

    replace_file(&ca_out, "NEW").unwrap();
    assert_eq!(std::fs::read_to_string(&ca_out).unwrap(), "NEW");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "no temporary file is left: {names:?}");
}
