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
