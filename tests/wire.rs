//! Hello shapes and forwarding: any segmentation and record framing routes the same, and the
//! backend receives exactly what the client sent, both ways, with half-close passed on.

mod support;

use sniroute::hello::synth::ClientHelloBuilder;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn two_backends() -> Proxy {
    let alpha = tls_backend("alpha", &["alpha.test"]).await;
    let beta = tls_backend("beta", &["beta.test"]).await;
    Proxy::start(&format!(
        "[[route]]\nsni = \"alpha.test\"\nbackend = \"{alpha}\"\n[[route]]\nsni = \"beta.test\"\nbackend = \"{beta}\"\n"
    ))
    .await
}

#[tokio::test]
async fn hello_sent_one_byte_at_a_time_routes_by_sni() {
    let proxy = two_backends().await;
    let exchange = tls_exchange(
        proxy.address,
        "beta.test",
        &[],
        Shape {
            records: 1,
            chunk: 1,
        },
    )
    .await;
    assert_eq!(exchange.answer.unwrap(), "beta: sni=beta.test alpn=-");
    proxy.shutdown().await;
}

#[tokio::test]
async fn hellos_split_across_two_and_five_records_route_by_sni() {
    let proxy = two_backends().await;
    for records in [2, 5] {
        let exchange = tls_exchange(
            proxy.address,
            "alpha.test",
            &["h2"],
            Shape {
                records,
                chunk: usize::MAX,
            },
        )
        .await;
        assert_eq!(
            exchange.answer.unwrap(),
            "alpha: sni=alpha.test alpn=-",
            "{records} records"
        );
        // And both at once: several records, written a few bytes at a time.
        let exchange =
            tls_exchange(proxy.address, "beta.test", &[], Shape { records, chunk: 7 }).await;
        assert_eq!(
            exchange.answer.unwrap(),
            "beta: sni=beta.test alpn=-",
            "{records} records, 7-byte writes"
        );
    }
    proxy.shutdown().await;
}

/// rustls sends an X25519MLKEM768 key share (1.2 KB); enough ALPN protocols bring the hello to
/// the 1.9 KB a post-quantum browser hello reaches.
#[tokio::test]
async fn a_post_quantum_size_hello_routes_by_sni() {
    let proxy = two_backends().await;
    let protocols: Vec<String> = (0..14)
        .map(|i| format!("x-protocol-with-a-long-name-{i:02}"))
        .collect();
    let protocols: Vec<&str> = protocols.iter().map(String::as_str).collect();
    let exchange = tls_exchange(proxy.address, "beta.test", &protocols, Shape::PLAIN).await;
    assert!(
        exchange.hello_len >= 1900,
        "hello of {} bytes",
        exchange.hello_len
    );
    assert_eq!(exchange.answer.unwrap(), "beta: sni=beta.test alpn=-");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_hello_over_16_kb_routes_by_sni_and_arrives_intact() {
    let mut small = Recording::start("small").await;
    let mut big = Recording::start("big").await;
    let proxy = Proxy::start(&format!(
        "[[route]]\nsni = \"small.test\"\nbackend = \"{}\"\n[[route]]\nsni = \"big.test\"\nbackend = \"{}\"\n",
        small.address, big.address
    ))
    .await;
    let hello = ClientHelloBuilder::new()
        .server_name("big.test")
        .padding(20_000)
        .record();
    assert!(hello.len() > 16 * 1024);
    assert_eq!(send_raw(proxy.address, &hello).await, b"big");
    assert_eq!(big.next().await, hello);
    let hello = ClientHelloBuilder::new().server_name("small.test").record();
    assert_eq!(send_raw(proxy.address, &hello).await, b"small");
    assert_eq!(small.next().await, hello);
    proxy.shutdown().await;
}

#[tokio::test]
async fn the_backend_receives_exactly_the_clients_bytes_hello_included() {
    let mut backend = Recording::start("recorder").await;
    let proxy = Proxy::start(&format!(
        "[[route]]\nsni = \"r.test\"\nbackend = \"{}\"\n",
        backend.address
    ))
    .await;
    let mut sent = sniroute::hello::synth::frame(
        &ClientHelloBuilder::new()
            .server_name("r.test")
            .alpn(&["h2"])
            .message(),
        3,
    );
    // Bytes after the hello in the same segment (early data, say) are forwarded too.
    sent.extend_from_slice(&[23, 3, 3, 0, 5, 1, 2, 3, 4, 5]);
    sent.extend((0..100_000u32).map(|i| (i % 251) as u8));
    assert_eq!(send_raw(proxy.address, &sent).await, b"recorder");
    assert_eq!(backend.next().await, sent);
    proxy.shutdown().await;
}

/// A deterministic byte stream and a checksum over it, so 64 MiB can be checked without keeping it.
fn pattern(seed: u64, offset: usize) -> u8 {
    (((offset as u64).wrapping_mul(2654435761) ^ seed) >> 7) as u8
}

fn checksum(data: &[u8], offset: usize, sum: &mut u64) {
    for (i, byte) in data.iter().enumerate() {
        *sum = sum
            .wrapping_mul(31)
            .wrapping_add(u64::from(*byte) ^ ((offset + i) as u64));
    }
}

async fn send_pattern(stream: &mut tokio::net::tcp::OwnedWriteHalf, seed: u64, len: usize) -> u64 {
    let mut sum = 0;
    let mut chunk = vec![0u8; 256 * 1024];
    let mut offset = 0;
    while offset < len {
        let n = chunk.len().min(len - offset);
        for (i, byte) in chunk[..n].iter_mut().enumerate() {
            *byte = pattern(seed, offset + i);
        }
        checksum(&chunk[..n], offset, &mut sum);
        stream.write_all(&chunk[..n]).await.unwrap();
        offset += n;
    }
    stream.shutdown().await.unwrap();
    sum
}

async fn receive_checksum(stream: &mut tokio::net::tcp::OwnedReadHalf) -> (usize, u64) {
    let mut sum = 0;
    let mut chunk = vec![0u8; 256 * 1024];
    let mut offset = 0;
    loop {
        let n = stream.read(&mut chunk).await.unwrap();
        if n == 0 {
            return (offset, sum);
        }
        checksum(&chunk[..n], offset, &mut sum);
        offset += n;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_each_way_arrive_intact() {
    const LEN: usize = 64 * 1024 * 1024;
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = Proxy::start(&format!(
        "[[route]]\nsni = \"bulk.test\"\nbackend = \"{}\"\n",
        backend.local_addr().unwrap()
    ))
    .await;
    let hello = ClientHelloBuilder::new().server_name("bulk.test").record();

    let hello_len = hello.len();
    let backend_side = tokio::spawn(async move {
        let (stream, _) = backend.accept().await.unwrap();
        let (mut read, mut write) = stream.into_split();
        let mut received_hello = vec![0; hello_len];
        read.read_exact(&mut received_hello).await.unwrap();
        let (sent, received) = tokio::join!(
            send_pattern(&mut write, 2, LEN),
            receive_checksum(&mut read)
        );
        (received_hello, sent, received)
    });
    let client = TcpStream::connect(proxy.address).await.unwrap();
    let (mut read, mut write) = client.into_split();
    write.write_all(&hello).await.unwrap();
    let (sent, received) = guard(async {
        tokio::join!(
            send_pattern(&mut write, 1, LEN),
            receive_checksum(&mut read)
        )
    })
    .await;
    let (backend_hello, backend_sent, backend_received) = guard(backend_side).await.unwrap();

    assert_eq!(backend_hello, hello);
    assert_eq!(backend_received, (LEN, sent), "client to backend");
    assert_eq!(received, (LEN, backend_sent), "backend to client");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_half_close_is_passed_on_and_the_other_direction_keeps_flowing() {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = Proxy::start(&format!(
        "[[route]]\nsni = \"half.test\"\nbackend = \"{}\"\n",
        backend.local_addr().unwrap()
    ))
    .await;
    let mut request = ClientHelloBuilder::new().server_name("half.test").record();
    request.extend_from_slice(b"request");

    let mut client = TcpStream::connect(proxy.address).await.unwrap();
    client.write_all(&request).await.unwrap();
    client.shutdown().await.unwrap();

    // The backend sees the client's EOF, and only then answers, at length.
    let (mut server, _) = guard(backend.accept()).await.unwrap();
    let received = read_until_closed(&mut server).await;
    assert_eq!(received, request);
    let answer: Vec<u8> = (0..1_000_000u32).map(|i| i as u8).collect();
    server.write_all(&answer).await.unwrap();
    server.shutdown().await.unwrap();

    assert_eq!(read_until_closed(&mut client).await, answer);
    proxy.shutdown().await;
}
