//! Hot reload (SIGHUP, or the config file changing): new connections follow the new table, open
//! connections keep theirs and lose no byte, a bad config changes nothing, listeners come and go.

mod support;

use sniroute::hello::synth::ClientHelloBuilder;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn route(name: &str, backend: std::net::SocketAddr) -> String {
    format!("[[route]]\nsni = \"{name}\"\nbackend = \"{backend}\"\n")
}

#[tokio::test]
async fn new_connections_follow_the_new_table_and_a_bad_config_changes_nothing() {
    let one = tls_backend("one", &["app.test"]).await;
    let two = tls_backend("two", &["app.test"]).await;
    let mut proxy = Proxy::start(&route("app.test", one)).await;
    assert_eq!(who_answers(proxy.address, "app.test", &[]).await, "one");

    let report = proxy.reload_with(&route("app.test", two)).await;
    assert_eq!(report.refused, None);
    assert_eq!(who_answers(proxy.address, "app.test", &[]).await, "two");

    let report = proxy
        .reload_with(&format!("{}alpn = 3\n", route("app.test", one)))
        .await;
    let refused = report.refused.unwrap();
    assert!(
        refused.ends_with("routes.toml:6:8: route[0].alpn: expected a list, found integer `3`"),
        "{refused}"
    );
    assert_eq!(who_answers(proxy.address, "app.test", &[]).await, "two");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_long_transfer_crosses_several_reloads_intact() {
    let echo = echo_backend().await;
    let elsewhere = Recording::start("elsewhere").await;
    let mut proxy = Proxy::start(&route("echo.test", echo)).await;
    let hello = ClientHelloBuilder::new().server_name("echo.test").record();
    let stream = TcpStream::connect(proxy.address).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    write.write_all(&hello).await.unwrap();

    let chunks: Vec<Vec<u8>> = (0..10u8)
        .map(|i| (0..512 * 1024u32).map(|j| (j as u8) ^ i).collect())
        .collect();
    let expected: Vec<u8> = hello
        .iter()
        .copied()
        .chain(chunks.iter().flatten().copied())
        .collect();
    let reader = tokio::spawn(async move {
        let mut received = Vec::new();
        read.read_to_end(&mut received).await.unwrap();
        received
    });
    for (index, chunk) in chunks.iter().enumerate() {
        write.write_all(chunk).await.unwrap();
        // Between chunks the table moves the name elsewhere and back, or is refused.
        let routes = match index % 3 {
            0 => route("echo.test", elsewhere.address),
            1 => "this is not toml".to_owned(),
            _ => route("echo.test", echo),
        };
        proxy.reload_with(&routes).await;
    }
    write.shutdown().await.unwrap();
    let received = guard(reader).await.unwrap();
    assert_eq!(received.len(), expected.len());
    assert!(received == expected, "the echoed stream differs");
    // Ten by signal, and as many again as the file watcher saw changes.
    assert!(proxy.reload_count() >= 10);
    proxy.shutdown().await;
}

#[tokio::test]
async fn listeners_added_by_a_reload_accept_and_removed_ones_close() {
    let backend = tls_backend("served", &["served.test"]).await;
    let routes = route("served.test", backend);
    let mut proxy = Proxy::start(&routes).await;
    // A second listener on another loopback address.
    let report = proxy
        .reload_with(&format!("[[listen]]\naddress = \"127.0.0.2:0\"\n{routes}"))
        .await;
    assert_eq!(report.refused, None);
    assert_eq!(report.listeners.len(), 2);
    assert_eq!(
        report.listeners[0], proxy.address,
        "the kept listener keeps its socket"
    );
    let added = report.listeners[1];
    assert_eq!(who_answers(added, "served.test", &[]).await, "served");

    let report = proxy.reload_with(&routes).await;
    assert_eq!(report.listeners, vec![proxy.address]);
    assert!(
        TcpStream::connect(added).await.is_err(),
        "the removed listener still accepts"
    );
    assert_eq!(
        who_answers(proxy.address, "served.test", &[]).await,
        "served"
    );

    // A listener that can't be bound refuses the whole reload.
    let taken = TcpSocket::new_v4().unwrap();
    taken.bind("127.0.0.3:0".parse().unwrap()).unwrap();
    let taken = taken.listen(1).unwrap();
    let other = tls_backend("other", &["served.test"]).await;
    let report = proxy
        .reload_with(&format!(
            "[[listen]]\naddress = \"{}\"\n{}",
            taken.local_addr().unwrap(),
            route("served.test", other)
        ))
        .await;
    assert!(report
        .refused
        .unwrap()
        .contains("listen[1].address: cannot bind"));
    assert_eq!(
        who_answers(proxy.address, "served.test", &[]).await,
        "served"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn changing_the_file_reloads_it_whether_rewritten_or_replaced_by_rename() {
    let one = tls_backend("one", &["app.test"]).await;
    let two = tls_backend("two", &["app.test"]).await;
    let mut proxy = Proxy::start(&route("app.test", one)).await;

    let before = proxy.reload_count();
    std::fs::write(
        &proxy.config_path,
        Proxy::config_text(&route("app.test", two)),
    )
    .unwrap();
    assert_eq!(proxy.next_reload(before).await.refused, None);
    assert_eq!(who_answers(proxy.address, "app.test", &[]).await, "two");

    let before = proxy.reload_count();
    proxy.replace_config(&route("app.test", one));
    assert_eq!(proxy.next_reload(before).await.refused, None);
    assert_eq!(who_answers(proxy.address, "app.test", &[]).await, "one");
    proxy.shutdown().await;
}

/// A Kubernetes ConfigMap volume: `routes.toml -> ..data/routes.toml`, `..data -> ..2026_01_01`.
/// The kubelet updates it by writing `..2026_01_02` and renaming a new `..data` symlink into
/// place; no file called routes.toml is touched, yet the proxy must reload. Then an in-place
/// edit of the file the chain now leads to is seen too.
#[tokio::test]
async fn a_configmap_update_by_symlink_swap_reloads_and_so_does_an_edit_of_its_target() {
    use std::os::unix::fs::symlink;

    let one = tls_backend("one", &["app.test"]).await;
    let two = tls_backend("two", &["app.test"]).await;
    let three = tls_backend("three", &["app.test"]).await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let version = |name: &str, backend| {
        std::fs::create_dir(root.join(name)).unwrap();
        std::fs::write(
            root.join(name).join("routes.toml"),
            Proxy::config_text(&route("app.test", backend)),
        )
        .unwrap();
    };
    version("..2026_01_01", one);
    symlink("..2026_01_01", root.join("..data")).unwrap();
    symlink("..data/routes.toml", root.join("routes.toml")).unwrap();
    let mut proxy = Proxy::start_at(dir, root.join("routes.toml")).await;
    assert_eq!(who_answers(proxy.address, "app.test", &[]).await, "one");

    let before = proxy.reload_count();
    version("..2026_01_02", two);
    symlink("..2026_01_02", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    let report = proxy.next_reload(before).await;
    assert_eq!(report.refused, None);
    assert_eq!(who_answers(proxy.address, "app.test", &[]).await, "two");

    let before = proxy.reload_count();
    std::fs::write(
        root.join("..2026_01_02/routes.toml"),
        Proxy::config_text(&route("app.test", three)),
    )
    .unwrap();
    proxy.next_reload(before).await;
    assert_eq!(who_answers(proxy.address, "app.test", &[]).await, "three");
    proxy.shutdown().await;
}

/// `reuse_port` can't change on a bound socket: a reload that changes it on a kept listener is
/// refused by name, never logged as applied while nothing changed.
#[tokio::test]
async fn a_reload_that_changes_a_kept_listeners_reuse_port_is_refused() {
    let backend = tls_backend("one", &["app.test"]).await;
    let routes = route("app.test", backend);
    let mut proxy = Proxy::start(&routes).await;
    let report = proxy
        .reload_with(&format!(
            "[[listen]]\naddress = \"127.0.0.7:0\"\nreuse_port = false\n{routes}"
        ))
        .await;
    assert_eq!(report.refused, None);
    let report = proxy
        .reload_with(&format!(
            "[[listen]]\naddress = \"127.0.0.7:0\"\nreuse_port = true\n{routes}"
        ))
        .await;
    let refused = report.refused.unwrap();
    assert!(
        refused.ends_with(
            "routes.toml:4:11: listen[1].reuse_port: can't change on a running listener; restart sniroute to apply it"
        ),
        "{refused}"
    );
    proxy.shutdown().await;
}

/// `[metrics]` added, moved and removed by reloads: each address serves once the reload is
/// applied, and the one it replaced stops.
#[tokio::test]
async fn a_reload_adds_moves_and_removes_the_metrics_endpoint() {
    let backend = tls_backend("one", &["app.test"]).await;
    let routes = route("app.test", backend);
    let mut proxy = Proxy::start(&routes).await;
    let with_metrics = |address: &str| format!("[metrics]\naddress = \"{address}\"\n{routes}");
    let first = proxy
        .reload_with(&with_metrics("127.0.0.1:0"))
        .await
        .metrics
        .expect("metrics after the reload");
    // The listener kept from before `[metrics]` existed counts too.
    assert_eq!(who_answers(proxy.address, "app.test", &[]).await, "one");
    let text = scrape(first, "/metrics").await;
    assert!(
        text.contains(&format!(
            "sniroute_connections_accepted_total{{listener=\"{}\"}}",
            proxy.address
        )),
        "{text}"
    );
    let second = proxy
        .reload_with(&with_metrics("127.0.0.8:0"))
        .await
        .metrics
        .expect("metrics after the move");
    assert_ne!(first, second);
    assert!(scrape(second, "/metrics").await.contains("sniroute_"));
    assert!(
        TcpStream::connect(first).await.is_err(),
        "the old address still serves"
    );
    let report = proxy.reload_with(&routes).await;
    assert_eq!(report.metrics, None);
    assert!(
        TcpStream::connect(second).await.is_err(),
        "removed metrics still serve"
    );
    proxy.shutdown().await;
}

/// Waits, reload after reload, until `name`'s answer satisfies `done` (a file change may take
/// more than one reload to show: the watcher sees every step of a kubelet's update).
async fn wait_until(proxy: &mut Proxy, name: &str, done: impl Fn(&str) -> bool) {
    loop {
        let before = proxy.reload_count();
        if done(&who_answers(proxy.address, name, &[]).await) {
            return;
        }
        proxy.next_reload(before).await;
    }
}

/// Waits until `name` is answered by `expected`.
async fn wait_until_answered(proxy: &mut Proxy, name: &str, expected: &str) {
    wait_until(proxy, name, |answer| answer == expected).await;
}

/// Tenant files (`include`): adding one starts routing its names with no signal, a broken one
/// is refused with a line naming it while the rest keeps serving, removing it reloads again.
#[tokio::test]
async fn tenant_files_added_broken_and_removed_reload_without_a_signal() {
    let a = tls_backend("a", &["a.test"]).await;
    let b = tls_backend("b", &["b.test"]).await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let tenants = root.join("routes.d");
    std::fs::create_dir(&tenants).unwrap();
    // Written beside, then renamed in: the watcher never sees half a file.
    let put = |name: &str, text: &str| {
        let staged = root.join(format!("staged-{name}"));
        std::fs::write(&staged, text).unwrap();
        std::fs::rename(&staged, tenants.join(name)).unwrap();
    };
    put("a.toml", &route("a.test", a));
    std::fs::write(
        root.join("routes.toml"),
        format!(
            "include = [\"routes.d/*.toml\"]\n{}",
            Proxy::config_text("")
        ),
    )
    .unwrap();
    let mut proxy = Proxy::start_at(dir, root.join("routes.toml")).await;
    assert_eq!(who_answers(proxy.address, "a.test", &[]).await, "a");
    assert_ne!(who_answers(proxy.address, "b.test", &[]).await, "b");

    put("b.toml", &route("b.test", b));
    wait_until_answered(&mut proxy, "b.test", "b").await;

    let before = proxy.reload_count();
    put(
        "c.toml",
        "[[route]]\nsni = \"a.test\"\nbackend = \"127.0.0.1:1\"\n",
    );
    let report = proxy.next_reload(before).await;
    let refused = report.refused.expect("a tenant file taking another's name");
    assert!(
        refused.contains("routes.d/c.toml:2:7: route[0].sni: same name as route[0] (")
            && refused.contains("routes.d/a.toml line 1)"),
        "{refused}"
    );
    assert_eq!(who_answers(proxy.address, "a.test", &[]).await, "a");
    assert_eq!(who_answers(proxy.address, "b.test", &[]).await, "b");

    let before = proxy.reload_count();
    std::fs::remove_file(tenants.join("c.toml")).unwrap();
    std::fs::remove_file(tenants.join("b.toml")).unwrap();
    let report = proxy.next_reload(before).await;
    assert_eq!(report.refused, None);
    wait_until(&mut proxy, "b.test", |answer| answer != "b").await;
    proxy.shutdown().await;
}

/// Tenant files from a second ConfigMap volume: `routes.d/a.toml -> ..data/a.toml`,
/// `..data -> ..2026_01_01`; the kubelet adds a key by writing a new version, swapping `..data`
/// by rename and adding the key's symlink. Hidden names (`..data`, the versions) are not tenant
/// files.
#[tokio::test]
async fn tenant_files_from_a_configmap_volume_follow_its_updates() {
    use std::os::unix::fs::symlink;

    let a = tls_backend("a", &["a.test"]).await;
    let b = tls_backend("b", &["b.test"]).await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let tenants = root.join("routes.d");
    std::fs::create_dir(&tenants).unwrap();
    let version = |name: &str, files: &[(&str, String)]| {
        std::fs::create_dir(tenants.join(name)).unwrap();
        for (file, text) in files {
            std::fs::write(tenants.join(name).join(file), text).unwrap();
        }
    };
    version("..2026_01_01", &[("a.toml", route("a.test", a))]);
    symlink("..2026_01_01", tenants.join("..data")).unwrap();
    symlink("..data/a.toml", tenants.join("a.toml")).unwrap();
    std::fs::write(
        root.join("routes.toml"),
        format!("include = [\"routes.d/*\"]\n{}", Proxy::config_text("")),
    )
    .unwrap();
    let mut proxy = Proxy::start_at(dir, root.join("routes.toml")).await;
    assert_eq!(who_answers(proxy.address, "a.test", &[]).await, "a");

    version(
        "..2026_01_02",
        &[
            ("a.toml", route("a.test", a)),
            ("b.toml", route("b.test", b)),
        ],
    );
    symlink("..2026_01_02", tenants.join("..data_tmp")).unwrap();
    std::fs::rename(tenants.join("..data_tmp"), tenants.join("..data")).unwrap();
    symlink("..data/b.toml", tenants.join("b.toml")).unwrap();
    wait_until_answered(&mut proxy, "b.test", "b").await;
    assert_eq!(who_answers(proxy.address, "a.test", &[]).await, "a");
    proxy.shutdown().await;
}

/// A tenant directory reached through a symlink that is swapped (`routes.d -> releases/v1`,
/// then `releases/v2` renamed into place, as deploy tools do): seen, and the new directory is
/// watched from then on.
#[tokio::test]
async fn a_tenant_directory_swapped_by_symlink_reloads() {
    use std::os::unix::fs::symlink;

    let a = tls_backend("a", &["a.test"]).await;
    let b = tls_backend("b", &["b.test"]).await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    for (release, routes) in [("v1", route("a.test", a)), ("v2", route("b.test", b))] {
        std::fs::create_dir_all(root.join("releases").join(release)).unwrap();
        std::fs::write(root.join("releases").join(release).join("t.toml"), routes).unwrap();
    }
    symlink("releases/v1", root.join("routes.d")).unwrap();
    std::fs::write(
        root.join("routes.toml"),
        format!(
            "include = [\"routes.d/*.toml\"]\n{}",
            Proxy::config_text("")
        ),
    )
    .unwrap();
    let mut proxy = Proxy::start_at(dir, root.join("routes.toml")).await;
    assert_eq!(who_answers(proxy.address, "a.test", &[]).await, "a");

    symlink("releases/v2", root.join("routes.d.new")).unwrap();
    std::fs::rename(root.join("routes.d.new"), root.join("routes.d")).unwrap();
    wait_until_answered(&mut proxy, "b.test", "b").await;

    // The new directory is the one watched now.
    std::fs::write(root.join("releases/v2/t2.toml"), route("a.test", a)).unwrap();
    wait_until_answered(&mut proxy, "a.test", "a").await;
    proxy.shutdown().await;
}
