//! The alerting rules' conventions and the files generated from them (issue 11): every alert
//! named `TimGateway…` with a `runbook_url` to its section of `docs/runbooks.md`, a row in the
//! README's table, and `deploy/prometheus/prometheusrule.yaml` the rules file as a
//! `PrometheusRule`. What the rules do is tested by `promtool test rules` (`.ci/run`).

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const RUNBOOKS: &str = "https://github.com/tim-gateway/tim-gateway/blob/main/docs/runbooks.md";

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}/{path}")).unwrap()
}

/// Each alert's name and its `runbook_url`, in file order.
fn alerts() -> Vec<(String, String)> {
    let rules = read("deploy/prometheus/tim-gateway-rules.yaml");
    let mut alerts: Vec<(String, String)> = Vec::new();
    for line in rules.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- alert: ") {
            alerts.push((name.to_owned(), String::new()));
        } else if let Some(url) = line.strip_prefix("runbook_url: ") {
            alerts
                .last_mut()
                .expect("an alert before its annotations")
                .1 = url.trim_matches('"').to_owned();
        }
    }
    alerts
}

/// The README's alert table rows: `| `name` | severity, for | fires when | what to do |`.
fn readme_rows() -> Vec<Vec<String>> {
    read("README.md")
        .lines()
        .filter(|l| l.starts_with("| `TimGateway"))
        .map(|l| {
            l.trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_owned())
                .collect()
        })
        .collect()
}

#[test]
fn every_alert_is_prefixed_with_a_runbook_and_documented() {
    let alerts = alerts();
    assert_eq!(alerts.len(), 20);
    let rows = readme_rows();
    let runbooks = read("docs/runbooks.md");
    for (name, url) in &alerts {
        assert!(name.starts_with("TimGateway"), "{name}");
        assert_eq!(
            *url,
            format!("{RUNBOOKS}#{}", name.to_lowercase()),
            "{name}"
        );
        assert!(
            runbooks.contains(&format!("\n## {name}\n")),
            "no runbook section for {name}"
        );
        assert!(
            rows.iter().any(|r| r[0] == format!("`{name}`")),
            "no README row for {name}"
        );
    }
    assert_eq!(
        rows.len(),
        alerts.len(),
        "a README row for an alert that does not exist"
    );
}

/// `docs/runbooks.md` is the README's table, one section per alert, so the two cannot drift.
#[test]
fn the_runbooks_are_the_readme_table() {
    let mut expected = String::from(
        "# tim-gateway runbooks\n\nOne section per alert of `deploy/prometheus/tim-gateway-rules.yaml` \
         (its `runbook_url` points here).\nThe README's \"Alerts\" table says the same in short; the \
         alert's own description names the metric and the labels.\n\n",
    );
    for row in readme_rows() {
        expected.push_str(&format!(
            "## {}\n\n**Severity, for:** {}.\n\n**Fires when:** {}.\n\n**What to do:** {}\n\n",
            row[0].trim_matches('`'),
            row[1],
            row[2],
            row[3]
        ));
    }
    assert_eq!(read("docs/runbooks.md").trim_end(), expected.trim_end());
}

/// `deploy/prometheus/prometheusrule.yaml` is what `scripts/prometheusrule.sh` makes of the
/// rules file: its groups, indented under `spec`.
#[test]
fn the_prometheusrule_is_the_rules_file() {
    let rules = read("deploy/prometheus/tim-gateway-rules.yaml");
    let groups = &rules[rules.find("\ngroups:").expect("a groups key") + 1..];
    let indented: String = groups
        .lines()
        .map(|l| {
            if l.is_empty() {
                "\n".to_owned()
            } else {
                format!("  {l}\n")
            }
        })
        .collect();
    let generated = read("deploy/prometheus/prometheusrule.yaml");
    let spec = generated.find("\nspec:\n").expect("a spec") + "\nspec:\n".len();
    assert!(generated.contains("kind: PrometheusRule\n"));
    assert_eq!(
        generated[spec..],
        indented,
        "run scripts/prometheusrule.sh after changing the rules"
    );
}
