use std::path::Path;

use proptest::prelude::*;

use super::*;

fn table(routes: &str) -> RouteTable {
    let text = format!("[[listen]]\naddress = \"127.0.0.1:1\"\n{routes}");
    RouteTable::new(
        &Config::parse(Path::new("routes.toml"), &text).unwrap(),
        None,
    )
}

fn route(name: &str, sni: &str, alpn: &str) -> String {
    let alpn = if alpn.is_empty() {
        String::new()
    } else {
        format!("alpn = [{alpn}]\n")
    };
    format!("[[route]]\nname = \"{name}\"\nsni = \"{sni}\"\n{alpn}backend = \"127.0.0.1:9\"\n")
}

fn offer(protocols: &[&str]) -> Alpn {
    Alpn::from_protocols(protocols).unwrap()
}

fn lookup<'a>(table: &'a RouteTable, name: &str, protocols: &[&str]) -> (Option<&'a str>, String) {
    let name = ServerName::parse(name.as_bytes()).unwrap();
    let decision = table.lookup(Some(&name), &offer(protocols));
    (
        decision.route.map(|route| route.name()),
        decision.reason.to_string(),
    )
}

#[test]
fn exact_beats_wildcard_and_the_longest_suffix_wins() {
    let table = table(
        &[
            route("short", "*.example.com", ""),
            route("long", "*.tenants.example.com", ""),
            route("exact", "a.tenants.example.com", ""),
        ]
        .concat(),
    );
    assert_eq!(
        lookup(&table, "a.tenants.example.com", &[]).0,
        Some("exact")
    );
    assert_eq!(lookup(&table, "b.tenants.example.com", &[]).0, Some("long"));
    assert_eq!(
        lookup(&table, "x.y.b.tenants.example.com", &[]).0,
        Some("long")
    );
    assert_eq!(lookup(&table, "tenants.example.com", &[]).0, Some("short"));
    assert_eq!(lookup(&table, "example.com", &[]).0, None);
    assert_eq!(
        lookup(&table, "other.org", &[]),
        (None, "no route matches the name".to_owned())
    );
}

#[test]
fn an_alpn_route_beats_the_plain_route_for_its_name_in_the_clients_order() {
    let table = table(
        &[
            route("plain", "api.test", ""),
            route("h2", "api.test", "\"h2\""),
            route("h1", "api.test", "\"http/1.1\""),
            route("grpc-only", "*.test", "\"grpc-exp\""),
        ]
        .concat(),
    );
    assert_eq!(
        lookup(&table, "api.test", &["h2", "http/1.1"]).0,
        Some("h2")
    );
    assert_eq!(
        lookup(&table, "api.test", &["http/1.1", "h2"]).0,
        Some("h1")
    );
    assert_eq!(lookup(&table, "api.test", &["acme-tls/1"]).0, Some("plain"));
    assert_eq!(lookup(&table, "api.test", &[]).0, Some("plain"));
    assert_eq!(
        lookup(&table, "api.test", &["h2"]).1,
        "the exact name matched, and the offered alpn h2 is in its list"
    );
    // A name whose only routes need an ALPN the client doesn't offer falls through.
    assert_eq!(lookup(&table, "other.test", &["h2"]).0, None);
    assert_eq!(
        lookup(&table, "other.test", &["grpc-exp"]).0,
        Some("grpc-only")
    );
}

#[test]
fn no_name_and_unknown_names_go_to_the_default() {
    let table = table(
        &[
            route("a", "a.test", ""),
            "[default]\nbackend = \"127.0.0.1:9\"\n".to_owned(),
        ]
        .concat(),
    );
    let empty = Alpn::default();
    let decision = table.lookup(None, &empty);
    assert_eq!(decision.route.unwrap().name(), "default");
    assert_eq!(decision.reason, Reason::NoServerName);
    assert_eq!(lookup(&table, "b.test", &[]).0, Some("default"));
}

proptest! {
    /// Whatever the table, a lookup returns a route whose pattern matches the name, and no other
    /// matching route is more specific (exact over wildcard, longer suffix over shorter).
    #[test]
    fn lookups_return_the_most_specific_matching_route(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        crate::fuzzing::route(&bytes);
    }
}

/// Routes sharing a target share its pools; labels come out of the table's text as the config
/// wrote them.
#[test]
fn routes_with_one_target_share_its_pool() {
    let table = table(
        &[
            route("a", "a.test", ""),
            route("b", "b.test", ""),
            "[[route]]\nsni = \"c.test\"\nbackend = \"127.0.0.1:10\"\n".to_owned(),
            "[[route]]\nsni = \"*.d.test\"\nalpn = [\"h2\"]\nbackend = \"127.0.0.1:9\"\n"
                .to_owned(),
        ]
        .concat(),
    );
    assert_eq!(table.pools().count(), 2);
    let pool = |name: &str| {
        let name = ServerName::parse(name.as_bytes()).unwrap();
        table
            .lookup(Some(&name), &offer(&["h2"]))
            .pool
            .unwrap()
            .clone()
    };
    assert!(Arc::ptr_eq(&pool("a.test"), &pool("b.test")));
    assert!(Arc::ptr_eq(&pool("a.test"), &pool("x.d.test")));
    assert!(!Arc::ptr_eq(&pool("a.test"), &pool("c.test")));
    let names: Vec<&str> = table.routes().map(|route| route.name()).collect();
    assert_eq!(names, ["a", "b", "c.test", "*.d.test/h2"]);
}

/// Routes of tenant files `files` (name, text), read as a config including them; and the paths.
fn tenant_config(dir: &Path, files: &[(&str, &str)]) -> Config {
    let tenants = dir.join("routes.d");
    let _ = std::fs::remove_dir_all(&tenants);
    std::fs::create_dir_all(&tenants).unwrap();
    for (name, text) in files {
        std::fs::write(tenants.join(name), text).unwrap();
    }
    let main = dir.join("routes.toml");
    std::fs::write(
        &main,
        "include = [\"routes.d/*.toml\"]\n[[listen]]\naddress = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    crate::config::load(&main).unwrap()
}

fn tenant(sni: &str, extra: &str) -> String {
    format!("[[route]]\nsni = \"{sni}\"\nbackend = \"127.0.0.1:9\"\n{extra}\n")
}

/// A patch takes one file's routes out and its new ones in, the others untouched: chains of
/// one pattern across files, wildcards, labels, and the counts for the log line.
#[test]
fn a_patch_replaces_one_files_routes() {
    let dir = tempfile::tempdir().unwrap();
    let b = [
        tenant("b.test", ""),
        tenant("x.test", ""),
        tenant("*.w.test", ""),
    ]
    .concat();
    let before = tenant_config(
        dir.path(),
        &[
            (
                "a.toml",
                &[tenant("a.test", ""), tenant("x.test", "alpn = [\"h2\"]")].concat(),
            ),
            ("b.toml", &b),
        ],
    );
    let table = RouteTable::new(&before, None);
    let after = tenant_config(
        dir.path(),
        &[
            (
                "a.toml",
                &[tenant("c.test", ""), tenant("*.w.test", "alpn = [\"h2\"]")].concat(),
            ),
            ("b.toml", &b),
        ],
    );
    let a: Arc<Path> = dir.path().join("routes.d/a.toml").into();
    let changed: Vec<Route> = (after.routes.iter())
        .filter(|route| route.file.as_deref() == Some(&*a))
        .cloned()
        .collect();
    let patched = table.patched(std::slice::from_ref(&a), &changed).unwrap();
    assert_eq!((patched.added, patched.removed), (2, 2));
    let table = patched.table;
    assert_eq!(lookup(&table, "a.test", &[]).0, None);
    assert_eq!(lookup(&table, "c.test", &[]).0, Some("c.test"));
    assert_eq!(lookup(&table, "b.test", &[]).0, Some("b.test"));
    assert_eq!(lookup(&table, "x.test", &["h2"]).0, Some("x.test"));
    assert_eq!(lookup(&table, "q.w.test", &["h2"]).0, Some("*.w.test/h2"));
    assert_eq!(lookup(&table, "q.w.test", &[]).0, Some("*.w.test"));
    let mut names: Vec<&str> = table.routes().map(|route| route.name()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["*.w.test", "*.w.test/h2", "b.test", "c.test", "x.test"]
    );

    // Taken out again, then put back: the same table as the first.
    let none: [Route; 0] = [];
    let emptied = table
        .patched(std::slice::from_ref(&a), &none)
        .unwrap()
        .table;
    assert_eq!(lookup(&emptied, "c.test", &[]).0, None);
    assert_eq!(lookup(&emptied, "q.w.test", &["h2"]).0, Some("*.w.test"));

    // A route that would tie with one kept, or take a kept label: no patch.
    let tie = tenant_config(
        dir.path(),
        &[
            ("a.toml", &tenant("b.test", "alpn = [\"h2\"]")),
            ("z.toml", ""),
        ],
    );
    assert!(
        emptied.patched(&[], &tie.routes[..1]).is_some(),
        "b.test's route has no alpn"
    );
    let label = tenant_config(
        dir.path(),
        &[("a.toml", &tenant("d.test", "name = \"b.test\""))],
    );
    assert!(emptied.patched(&[], &label.routes).is_none());
    let same = tenant_config(dir.path(), &[("a.toml", &tenant("x.test", ""))]);
    assert!(emptied.patched(&[], &same.routes).is_none());
}

/// Patching one file again and again piles nothing up (its routes live in the added set, made
/// anew each time); taking out more than a fifth of the base (and more than a few), a patch
/// declines and the caller builds anew.
#[test]
fn a_patch_declines_once_a_fifth_is_taken_out() {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<(String, String)> = (0..20)
        .map(|file| {
            let routes = (0..100).map(|index| tenant(&format!("t{file}-{index}.test"), ""));
            (format!("t{file:02}.toml"), routes.collect())
        })
        .collect();
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let config = tenant_config(dir.path(), &files);
    let file = |index: usize| -> Arc<Path> {
        dir.path().join(format!("routes.d/t{index:02}.toml")).into()
    };
    let mut table = RouteTable::new(&config, None);
    for _ in 0..10 {
        table = table
            .patched(&[file(0)], &config.routes[..100])
            .unwrap()
            .table;
    }
    assert_eq!(lookup(&table, "t0-7.test", &[]).0, Some("t0-7.test"));
    assert_eq!(table.routes().count(), 2000);
    // t00's first routes are out of the base already: 100, and 900 more.
    let nine: Vec<Arc<Path>> = (1..=9).map(file).collect();
    let emptied = table.patched(&nine, &[]).unwrap().table;
    assert_eq!(emptied.routes().count(), 1100);
    assert_eq!(lookup(&emptied, "t5-7.test", &[]).0, None);
    assert_eq!(lookup(&emptied, "t15-7.test", &[]).0, Some("t15-7.test"));
    let ten: Vec<Arc<Path>> = (1..=10).map(file).collect();
    assert!(table.patched(&ten, &[]).is_none());
}
