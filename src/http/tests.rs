use super::*;

fn read(bytes: &[u8]) -> Result<Option<Head>, HeadError> {
    HeadReader::new(16 * 1024).feed(bytes)
}

fn head(bytes: &str) -> Head {
    read(bytes.as_bytes()).unwrap().unwrap()
}

fn refused(bytes: &str) -> HeadError {
    read(bytes.as_bytes()).unwrap_err()
}

#[test]
fn a_request_is_routed_by_its_host_without_port() {
    let parsed =
        head("GET /a/b?c=d HTTP/1.1\r\nHost: App.Example.TEST.:8080\r\nAccept: */*\r\n\r\nbody");
    assert_eq!(parsed.host.as_ref().unwrap().as_str(), "app.example.test");
    assert_eq!(&*parsed.target, "/a/b?c=d");
    assert_eq!(
        parsed.len,
        "GET /a/b?c=d HTTP/1.1\r\nHost: App.Example.TEST.:8080\r\nAccept: */*\r\n\r\n".len()
    );
    assert!(!parsed.is_acme());
    assert!(
        head("GET /.well-known/acme-challenge/tok_en-1 HTTP/1.1\r\nHost: a.test\r\n\r\n").is_acme()
    );
    // Only a challenge-shaped request passes for one: no other path, method or body.
    for request in [
        "GET /.well-known/acme-challenge/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
        "GET /.well-known/acme-challenge/../../admin HTTP/1.1\r\nHost: a.test\r\n\r\n",
        "GET /.well-known/acme-challenge/%2e%2e/admin HTTP/1.1\r\nHost: a.test\r\n\r\n",
        "GET /.well-known/acme-challenge/t?x=1 HTTP/1.1\r\nHost: a.test\r\n\r\n",
        "POST /.well-known/acme-challenge/t HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1\r\n\r\n",
        "GET /.well-known/acme-challenge/t HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4\r\n\r\n",
    ] {
        assert!(!head(request).is_acme(), "{request}");
    }
}

#[test]
fn absolute_form_targets_give_their_path_and_must_agree_with_host() {
    let parsed = head("GET http://a.test/x?y HTTP/1.1\r\nHost: a.test\r\n\r\n");
    assert_eq!(
        (parsed.host.unwrap().as_str(), &*parsed.target),
        ("a.test", "/x?y")
    );
    assert_eq!(
        &*head("GET HTTP://A.test HTTP/1.1\r\nHost: a.test\r\n\r\n").target,
        "/"
    );
    assert_eq!(
        refused("GET http://b.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n"),
        HeadError::Malformed("the target's authority differs from Host")
    );
}

#[test]
fn http_1_0_may_have_no_host_and_ip_hosts_are_no_name() {
    assert_eq!(head("GET / HTTP/1.0\r\n\r\n").host, None);
    assert_eq!(
        head("GET / HTTP/1.1\r\nHost: 192.0.2.1:80\r\n\r\n").host,
        None
    );
    assert_eq!(
        head("GET / HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n\r\n").host,
        None
    );
}

#[test]
fn incomplete_heads_need_more_and_every_split_gives_the_same_head() {
    let whole = "GET /p HTTP/1.1\r\nHost: a.test\r\nX: y\r\n\r\n";
    assert_eq!(read(b"GET /p HTTP/1.1\r\nHost: a.te"), Ok(None));
    for split in 0..whole.len() {
        let mut reader = HeadReader::new(1024);
        let first = reader.feed(&whole.as_bytes()[..split]);
        assert_eq!(first, Ok(None), "{split}");
        assert_eq!(reader.feed(whole.as_bytes()).unwrap().unwrap(), head(whole));
    }
}

/// What two readers could understand differently is refused (RFC 9112 §§ 2.2, 3.2, 5.2, 6.1,
/// 6.3), with 400; too much with 431.
#[test]
fn ambiguous_and_oversized_heads_are_refused() {
    for (request, reason) in [
        ("GET / HTTP/1.1\nHost: a.test\n\n", "a bare LF"),
        ("GET / HTTP/1.1\r\nHost: a.test\nX: y\r\n\r\n", "a bare LF"),
        ("GET / HTTP/1.1\r\nHost: a.test\r\nX: y\r\n z\r\n\r\n", "a folded header line"),
        ("GET / HTTP/1.1\r\n\r\n", "no Host header"),
        ("GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n", "two Host headers"),
        ("POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", "both Content-Length and Transfer-Encoding"),
        ("POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", "two different Content-Lengths"),
        ("POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: -1\r\n\r\n", "a Content-Length that is not a number"),
        ("POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", "a Transfer-Encoding not ending in chunked"),
        ("POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", "two Transfer-Encoding headers"),
        ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "Transfer-Encoding in HTTP/1.0"),
        ("GET / HTTP/1.1\r\nHost: a.test:x\r\n\r\n", "a Host with a bad port"),
        ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", "a Host that is not a name"),
        ("CONNECT a.test:443 HTTP/1.1\r\nHost: a.test\r\n\r\n", "a request target that is neither a path nor a URL"),
        ("GET http://user@a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n", "a URL without a plain authority"),
        ("GET / HTTP/2.0\r\nHost: a.test\r\n\r\n", "not an HTTP/1.x request head"),
        ("\u{16}\u{3}\u{1}\r\n\r\n", "not an HTTP/1.x request head"),
    ] {
        assert_eq!(refused(request), HeadError::Malformed(reason), "{request:?}");
        assert_eq!(refused(request).status().0, 400);
    }
    // Identical repeated Content-Lengths are one value (RFC 9112 §6.3).
    assert!(read(
        b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"
    )
    .unwrap()
    .is_some());

    let mut reader = HeadReader::new(64);
    let long = format!("GET /{} HTTP/1.1\r\n", "x".repeat(100));
    assert_eq!(
        reader.feed(long.as_bytes()),
        Err(HeadError::TooLarge { limit: 64 })
    );
    let many: String = (0..200).map(|n| format!("X-{n}: y\r\n")).collect();
    let request = format!("GET / HTTP/1.1\r\nHost: a.test\r\n{many}\r\n");
    assert_eq!(refused(&request).status().0, 431);
}
