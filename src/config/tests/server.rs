//! `[server]`: listeners, body limit, shutdown grace, browser protection, connections and
//! worker threads.

use std::time::Duration;

use super::*;
use crate::config::{available_cpus, ListenAddr};

/// Absent `[server]` keys take the documented defaults.
#[test]
fn server_keys_take_their_documented_defaults() {
    let Loaded { config, warnings } = load(MINIMAL, &env(&[]));
    assert!(warnings.is_empty(), "{warnings:?}");
    let s = &config.server;
    assert_eq!(s.listen, "127.0.0.1:18460".parse().unwrap());
    assert_eq!(s.admin_listen, "127.0.0.1:18461".parse().unwrap());
    assert!(!s.allow_non_loopback);
    assert_eq!(s.max_body_bytes, 1_048_576);
    assert!(!s.allow_unknown_commands);
    assert_eq!(s.shutdown_grace, Duration::from_secs(25));
    assert_eq!(s.allowed_hosts, Vec::<String>::new());
    assert_eq!(s.max_connections, None);
    assert_eq!(s.worker_threads, None);
    assert_eq!(s.admin_token, None);
}

/// Every kind of `[server]` problem is reported under its own key with a message that says
/// what is wrong.
#[test]
fn each_server_problem_is_reported_under_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let blank = write_file(&dir, "blank", b" \n\t\n");
    let missing = dir.path().join("missing").to_str().unwrap().to_owned();
    let cases: Vec<(String, &str, &str)> = vec![
        (
            server("listen = \"localhost:80\""),
            "server.listen",
            "not an IP address and port",
        ),
        (
            server("listen = \"0.0.0.0:8080\""),
            "server.listen",
            "hands out admin power",
        ),
        (
            server("admin_listen = \"[::]:9090\""),
            "server.admin_listen",
            "not a loopback",
        ),
        (
            server("listen = \"127.0.0.1:7000\"\nadmin_listen = \"127.0.0.1:7000\""),
            "server.admin_listen",
            "its own address",
        ),
        (
            server("max_body_bytes = 0"),
            "server.max_body_bytes",
            "out of range",
        ),
        (
            server("max_body_bytes = 67108865"),
            "server.max_body_bytes",
            "out of range",
        ),
        (
            server("max_body_bytes = -1"),
            "server.max_body_bytes",
            "expected",
        ),
        (
            server("allowed_hosts = [\"http://evil.example\"]"),
            "server.allowed_hosts[0]",
            "not a host name",
        ),
        (
            server("allowed_hosts = [\"ok.example\", \"a host\"]"),
            "server.allowed_hosts[1]",
            "not a host name",
        ),
        (
            server("max_connections = 0"),
            "server.max_connections",
            "out of range",
        ),
        (
            server("allow_non_loopback = true\nadmin_listen = \"0.0.0.0:9090\""),
            "server.admin_token_file",
            "needs a bearer token",
        ),
        (
            server(&format!("admin_token_file = \"{blank}\"")),
            "server.admin_token_file",
            "at least 16 printable",
        ),
        (
            server(&format!("admin_token_file = \"{missing}\"")),
            "server.admin_token_file",
            "cannot read",
        ),
        (
            server("allow_unknown_commands = \"maybe\""),
            "server.allow_unknown_commands",
            "expected",
        ),
        (
            server("shutdown_grace = \"0s\""),
            "server.shutdown_grace",
            "is zero",
        ),
        (
            server("shutdown_grace = \"11m\""),
            "server.shutdown_grace",
            "give at most 10m",
        ),
        (
            server("shutdown_grace = \"soon\""),
            "server.shutdown_grace",
            "not a duration",
        ),
    ];
    for (toml, key, fragment) in cases {
        assert_problem(&toml, &env(&[]), key, fragment);
    }
}

/// The browser-protection and connection keys: defaults, file values, the comma-separated
/// environment form, and a token that is read but never printed.
#[test]
fn server_protection_keys() {
    let dir = tempfile::tempdir().unwrap();
    let token = write_file(&dir, "token", b"0123456789abcdef-token\n");
    let toml = server(&format!(
        "allowed_hosts = [\"Tim.Chat.svc\", \"*.example.com\", \"10.0.0.1\"]\n\
         max_connections = 100\nadmin_token_file = \"{token}\""
    ));
    let loaded = load(&toml, &env(&[]));
    let s = &loaded.config.server;
    assert_eq!(
        s.allowed_hosts,
        ["tim.chat.svc", "*.example.com", "10.0.0.1"]
    );
    assert_eq!(s.max_connections, Some(100));
    let admin_token = s.admin_token.as_ref().expect("token read");
    assert!(admin_token.matches(b"0123456789abcdef-token"));
    assert!(!admin_token.matches(b"0123456789abcdef-tokem"));
    let listing = loaded.config.to_string();
    assert!(!listing.contains("0123456789abcdef"), "{listing}");
    assert!(!format!("{:?}", loaded.config).contains("0123456789abcdef"));
    let from_env = load(
        MINIMAL,
        &env(&[("TIM_GATEWAY__SERVER__ALLOWED_HOSTS", "a.svc, b.svc")]),
    );
    assert_eq!(from_env.config.server.allowed_hosts, ["a.svc", "b.svc"]);
}

/// `server.worker_threads` accepts 1 ..= 1024 from the file, and refuses zero, more, and
/// anything that is not a whole number.
#[test]
fn worker_threads_is_a_whole_number_from_1_to_1024() {
    let accepted = [("1", 1), ("4", 4), ("1024", 1024)];
    for (value, expected) in accepted {
        let config = load(&server(&format!("worker_threads = {value}")), &env(&[])).config;
        assert_eq!(config.server.worker_threads, Some(expected), "{value}");
        assert_eq!(config.server.effective_worker_threads(), expected);
    }
    let refused = [
        ("0", "0 is out of range; give 1 ..= 1024, or leave it unset"),
        ("1025", "1025 is out of range; give 1 ..= 1024"),
        ("-1", "expected"),
        ("\"four\"", "expected"),
    ];
    for (value, fragment) in refused {
        let toml = server(&format!("worker_threads = {value}"));
        assert_problem(&toml, &env(&[]), "server.worker_threads", fragment);
    }
}

/// Unset, `serve` gets one worker thread per CPU the process may use, and `check-config`
/// says so; set, it prints the number alone.
#[test]
fn worker_threads_defaults_to_the_available_cpus() {
    let config = load(MINIMAL, &env(&[])).config;
    let cpus = available_cpus();
    assert!(cpus >= 1);
    assert_eq!(
        cpus,
        std::thread::available_parallelism().unwrap().get(),
        "std is the source of the default"
    );
    assert_eq!(config.server.effective_worker_threads(), cpus);
    let line = format!("server.worker_threads = {cpus} (default: {cpus} CPUs available)\n");
    assert!(config.to_string().contains(&line), "{config}");
    let set = load(&server("worker_threads = 3"), &env(&[])).config;
    assert!(set.to_string().contains("server.worker_threads = 3\n"));
}

/// `TIM_GATEWAY__SERVER__WORKER_THREADS` overrides the file, and a bad value names the
/// variable.
#[test]
fn worker_threads_can_be_set_from_the_environment() {
    let file = server("worker_threads = 8");
    let config = load(&file, &env(&[("TIM_GATEWAY__SERVER__WORKER_THREADS", "2")])).config;
    assert_eq!(config.server.worker_threads, Some(2));
    assert_eq!(config.server.effective_worker_threads(), 2);
    assert_problem(
        MINIMAL,
        &env(&[("TIM_GATEWAY__SERVER__WORKER_THREADS", "0")]),
        "server.worker_threads",
        "(set by TIM_GATEWAY__SERVER__WORKER_THREADS)",
    );
}

/// `server.listen = "unix:/path"`: an absolute socket path (at most 107 bytes), permissions
/// `server.listen_mode` in octal (default 0660).
#[test]
fn the_client_listener_may_be_a_unix_socket() {
    let s = load(&server("listen = \"unix:/run/tim/gw.sock\""), &env(&[]))
        .config
        .server;
    assert_eq!(s.listen, ListenAddr::Unix("/run/tim/gw.sock".into()));
    assert_eq!(s.listen.to_string(), "unix:/run/tim/gw.sock");
    assert_eq!(s.listen_mode, 0o660);
    let s = load(
        &server("listen = \"unix:/run/tim/gw.sock\"\nlisten_mode = \"0666\""),
        &env(&[]),
    )
    .config
    .server;
    assert_eq!(s.listen_mode, 0o666);
    assert_problem(
        &server("listen = \"unix:run/gw.sock\""),
        &env(&[]),
        "server.listen",
        "is not an absolute path",
    );
    assert_problem(
        &server(&format!("listen = \"unix:/{}\"", "a".repeat(120))),
        &env(&[]),
        "server.listen",
        "longer than a socket path may be",
    );
    assert_problem(
        &server("listen_mode = \"rw\""),
        &env(&[]),
        "server.listen_mode",
        "not a file mode in octal",
    );
}

/// `server.tls_cert_file` and `server.tls_key_file`: both or neither, and they must load as a
/// certificate and its key (the message names the file, never its contents).
#[test]
fn tls_needs_a_certificate_and_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let both = format!(
        "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
        cert_file.display(),
        key_file.display()
    );
    let s = load(&server(&both), &env(&[])).config.server;
    assert_eq!(s.tls, Some((cert_file.clone(), key_file.clone())));
    assert_problem(
        &server(&format!("tls_cert_file = \"{}\"", cert_file.display())),
        &env(&[]),
        "server.tls_key_file",
        "is required with server.tls_cert_file",
    );
    let swapped = format!(
        "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
        key_file.display(),
        cert_file.display()
    );
    assert_problem(
        &server(&swapped),
        &env(&[]),
        "server.tls_cert_file",
        "holds no PEM certificate",
    );
    let unix = format!("{both}\nlisten = \"unix:/run/gw.sock\"");
    assert_problem(
        &server(&unix),
        &env(&[]),
        "server.tls_cert_file",
        "TLS is for a TCP listen address",
    );
}
