//! Routing through the real proxy to real TLS backends, proven by what each backend answers.

mod support;

use support::*;

#[tokio::test]
async fn exact_names_reach_their_own_backends() {
    let alpha = tls_backend("alpha", &["alpha.test"]).await;
    let beta = tls_backend("beta", &["beta.test"]).await;
    let proxy = Proxy::start(&format!(
        "[[route]]\nsni = \"alpha.test\"\nbackend = \"{alpha}\"\n[[route]]\nsni = \"beta.test\"\nbackend = \"{beta}\"\n"
    ))
    .await;
    let exchange = tls_exchange(proxy.address, "alpha.test", &[], Shape::PLAIN).await;
    assert_eq!(exchange.answer.unwrap(), "alpha: sni=alpha.test alpn=-");
    assert_eq!(who_answers(proxy.address, "beta.test", &[]).await, "beta");
    assert_eq!(who_answers(proxy.address, "alpha.test", &[]).await, "alpha");
    proxy.shutdown().await;
}

#[tokio::test]
async fn the_longest_wildcard_suffix_wins_and_exact_beats_wildcard() {
    let names = [
        "*.example.test",
        "*.tenants.example.test",
        "a.tenants.example.test",
        "deep.x.tenants.example.test",
    ];
    let short = tls_backend("short", &names).await;
    let long = tls_backend("long", &names).await;
    let exact = tls_backend("exact", &names).await;
    let proxy = Proxy::start(&format!(
        "[[route]]\nsni = \"*.example.test\"\nbackend = \"{short}\"\n\
         [[route]]\nsni = \"*.tenants.example.test\"\nbackend = \"{long}\"\n\
         [[route]]\nsni = \"a.tenants.example.test\"\nbackend = \"{exact}\"\n"
    ))
    .await;
    assert_eq!(
        who_answers(proxy.address, "a.tenants.example.test", &[]).await,
        "exact"
    );
    assert_eq!(
        who_answers(proxy.address, "b.tenants.example.test", &[]).await,
        "long"
    );
    assert_eq!(
        who_answers(proxy.address, "deep.x.tenants.example.test", &[]).await,
        "long"
    );
    assert_eq!(
        who_answers(proxy.address, "tenants.example.test", &[]).await,
        "short"
    );
    proxy.shutdown().await;
}

/// rustls normalises the names it sends, so these hellos are built by hand and sent to recording
/// backends, which answer with their name.
#[tokio::test]
async fn uppercase_and_trailing_dot_names_route_like_their_lowercase_form() {
    let mut app = Recording::start("app").await;
    let proxy = Proxy::start(&format!(
        "[[route]]\nsni = \"App.Example.TEST.\"\nbackend = \"{}\"\n",
        app.address
    ))
    .await;
    for sent in [
        "app.example.test",
        "APP.Example.Test",
        "app.example.test.",
        "App.EXAMPLE.test.",
    ] {
        let hello = sniroute::hello::synth::ClientHelloBuilder::new()
            .server_name(sent)
            .record();
        assert_eq!(send_raw(proxy.address, &hello).await, b"app", "{sent}");
        assert_eq!(app.next().await, hello, "{sent}");
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_hello_without_a_name_goes_to_the_default() {
    let named = tls_backend("named", &["a.test"]).await;
    let default = tls_backend("default", &["127.0.0.1", "unknown.test"]).await;
    let proxy = Proxy::start(&format!(
        "[[route]]\nsni = \"a.test\"\nbackend = \"{named}\"\n[default]\nbackend = \"{default}\"\n"
    ))
    .await;
    // A rustls client connecting to an IP address sends no server_name extension.
    let exchange = tls_exchange(proxy.address, "127.0.0.1", &[], Shape::PLAIN).await;
    assert_eq!(exchange.answer.unwrap(), "default: sni=- alpn=-");
    assert_eq!(
        who_answers(proxy.address, "unknown.test", &[]).await,
        "default"
    );
    assert_eq!(who_answers(proxy.address, "a.test", &[]).await, "named");
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_unknown_name_without_a_default_gets_unrecognized_name() {
    let named = tls_backend("named", &["a.test"]).await;
    let proxy = Proxy::start(&format!(
        "[[route]]\nsni = \"a.test\"\nbackend = \"{named}\"\n"
    ))
    .await;
    let exchange = tls_exchange(proxy.address, "unknown.test", &[], Shape::PLAIN).await;
    assert_eq!(
        exchange.answer.unwrap_err(),
        rustls::Error::AlertReceived(rustls::AlertDescription::UnrecognisedName)
    );
    let exchange = tls_exchange(proxy.address, "127.0.0.1", &[], Shape::PLAIN).await;
    assert_eq!(
        exchange.answer.unwrap_err(),
        rustls::Error::AlertReceived(rustls::AlertDescription::UnrecognisedName)
    );
    assert_eq!(who_answers(proxy.address, "a.test", &[]).await, "named");
    proxy.shutdown().await;
}

#[tokio::test]
async fn alpn_offers_pick_the_route_for_the_clients_preferred_protocol() {
    let h2 = tls_backend("h2", &["api.test"]).await;
    let h1 = tls_backend("h1", &["api.test"]).await;
    let other = tls_backend("other", &["api.test"]).await;
    let proxy = Proxy::start(&format!(
        "[[route]]\nsni = \"api.test\"\nbackend = \"{other}\"\n\
         [[route]]\nsni = \"api.test\"\nalpn = [\"h2\"]\nbackend = \"{h2}\"\n\
         [[route]]\nsni = \"api.test\"\nalpn = [\"http/1.1\"]\nbackend = \"{h1}\"\n"
    ))
    .await;
    assert_eq!(
        who_answers(proxy.address, "api.test", &["h2", "http/1.1"]).await,
        "h2"
    );
    assert_eq!(
        who_answers(proxy.address, "api.test", &["http/1.1", "h2"]).await,
        "h1"
    );
    assert_eq!(
        who_answers(proxy.address, "api.test", &["acme-tls/1"]).await,
        "other"
    );
    assert_eq!(who_answers(proxy.address, "api.test", &[]).await, "other");
    proxy.shutdown().await;
}

/// RFC 7301 bounds an ALPN list only by the hello's size, and real clients send long ones
/// (Python's ssl with 200 protocols): a rustls client offering 200, the last one the route's,
/// is routed by it, as HAProxy and nginx would.
#[tokio::test]
async fn a_hello_offering_two_hundred_alpn_protocols_is_routed_by_them() {
    let plain = tls_backend("plain", &["many.test"]).await;
    let h2 = tls_backend("h2", &["many.test"]).await;
    let proxy = Proxy::start(&format!(
        "[[route]]\nsni = \"many.test\"\nbackend = \"{plain}\"\n\
         [[route]]\nsni = \"many.test\"\nalpn = [\"h2\"]\nbackend = \"{h2}\"\n"
    ))
    .await;
    let mut offer: Vec<String> = (0..199).map(|i| format!("x-protocol-{i}")).collect();
    offer.push("h2".to_owned());
    let offer: Vec<&str> = offer.iter().map(String::as_str).collect();
    assert_eq!(who_answers(proxy.address, "many.test", &offer).await, "h2");
    assert_eq!(
        who_answers(proxy.address, "many.test", &offer[..199]).await,
        "plain"
    );
    proxy.shutdown().await;
}
