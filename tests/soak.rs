//! The operations soak (issue "Operating it"): 200 concurrent long transfers through the real
//! binary while its config is reloaded 50 times (a third of the reloads invalid, half by SIGHUP
//! and half by replacing the file), then SIGTERM while they are still transferring: no connection
//! and no byte is lost, and the process drains and exits 0.
//!
//! Transfers are paced by the test: each sends a chunk, then waits for the next phase, so every
//! one of them is open across every reload and the shutdown. Reloads are acknowledged by the
//! binary's own log line; nothing sleeps.

mod support;

use std::net::SocketAddr;

use sniroute::hello::synth::ClientHelloBuilder;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

const CONNECTIONS: usize = 200;
const RELOADS: usize = 50;
/// Chunks each connection sends: one before the reloads, one per ten reloads, one after SIGTERM.
const CHUNK: usize = 32 * 1024;

fn byte(connection: usize, offset: usize) -> u8 {
    (connection
        .wrapping_mul(31)
        .wrapping_add(offset.wrapping_mul(7))
        % 251) as u8
}

/// One paced transfer: the hello, then one chunk per phase until `phases` says the last one;
/// returns how many bytes came back and whether each was the one sent.
async fn transfer(
    proxy: SocketAddr,
    id: usize,
    mut phases: watch::Receiver<usize>,
    last_phase: usize,
    spliced: tokio::sync::mpsc::Sender<()>,
) -> (usize, bool) {
    let hello = ClientHelloBuilder::new().server_name("soak.test").record();
    let sent_hello = hello.clone();
    let stream = TcpStream::connect(proxy).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let reader = tokio::spawn(async move {
        let mut echoed_hello = vec![0; hello.len()];
        read.read_exact(&mut echoed_hello).await.unwrap();
        spliced.send(()).await.unwrap();
        let (mut received, mut intact) = (0, echoed_hello == hello);
        let mut buffer = vec![0; 16 * 1024];
        loop {
            let n = read.read(&mut buffer).await.unwrap();
            if n == 0 {
                return (received, intact);
            }
            intact &= buffer[..n]
                .iter()
                .enumerate()
                .all(|(i, b)| *b == byte(id, received + i));
            received += n;
        }
    });
    write.write_all(&sent_hello).await.unwrap();
    let mut sent = 0;
    for phase in 0..=last_phase {
        guard(phases.wait_for(|current| *current >= phase))
            .await
            .unwrap();
        let chunk: Vec<u8> = (0..CHUNK).map(|i| byte(id, sent + i)).collect();
        write.write_all(&chunk).await.unwrap();
        sent += CHUNK;
    }
    write.shutdown().await.unwrap();
    guard(reader).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_transfers_survive_fifty_reloads_and_a_drain() {
    let echo = echo_backend().await;
    let elsewhere = echo_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routes.toml");
    let text = |backend: SocketAddr| {
        format!(
            "[[listen]]\naddress = \"127.0.0.1:0\"\n[timeouts]\ndrain = \"1h\"\n\
             [limits]\nmax_pending_per_ip = 0\n[[route]]\nsni = \"soak.test\"\nbackend = \"{backend}\"\n"
        )
    };
    std::fs::write(&config, text(echo)).unwrap();
    let mut binary = Binary::start(&config, &["--workers", "2"]).await;
    let proxy = binary.wait_for_address("listening").await;

    let last_phase = RELOADS / 10 + 1;
    let (phase, phases) = watch::channel(0);
    let (spliced, mut all_spliced) = tokio::sync::mpsc::channel(CONNECTIONS);
    let transfers: Vec<_> = (0..CONNECTIONS)
        .map(|id| {
            tokio::spawn(transfer(
                proxy,
                id,
                phases.clone(),
                last_phase,
                spliced.clone(),
            ))
        })
        .collect();
    // Every transfer is spliced (its hello came back) before the first reload.
    for _ in 0..CONNECTIONS {
        guard(all_spliced.recv()).await.unwrap();
    }
    let mut refused = 0;
    for reload in 0..RELOADS {
        let replacement = dir.path().join("routes.toml.new");
        if reload % 3 == 2 {
            std::fs::write(
                &replacement,
                "[[listen]]\naddress = \"127.0.0.1:0\"\n[[route]]\nsni = 3\n",
            )
            .unwrap();
            refused += 1;
        } else {
            std::fs::write(
                &replacement,
                text(if reload % 2 == 0 { elsewhere } else { echo }),
            )
            .unwrap();
        }
        std::fs::rename(&replacement, &config).unwrap();
        if reload % 2 == 0 {
            binary.signal("HUP");
        }
        binary
            .wait_for_line(if reload % 3 == 2 {
                "reload refused"
            } else {
                "config reloaded"
            })
            .await;
        if reload % 10 == 9 {
            phase.send_replace(reload / 10 + 1);
        }
    }
    binary.signal("TERM");
    binary.wait_for_line("listeners closed").await;
    assert!(
        TcpStream::connect(proxy).await.is_err(),
        "still accepting after SIGTERM"
    );
    phase.send_replace(last_phase);

    let mut lost = 0;
    for (id, transfer) in transfers.into_iter().enumerate() {
        let (received, intact) = guard(transfer).await.unwrap();
        assert!(intact, "connection {id}: bytes differ");
        lost += (last_phase + 1) * CHUNK - received;
    }
    assert_eq!(lost, 0);
    assert_eq!(binary.wait().await, Some(0));
    eprintln!(
        "soak: {CONNECTIONS} connections, {RELOADS} reloads ({refused} refused), {} bytes each way per connection, {} in all, none lost",
        (last_phase + 1) * CHUNK,
        CONNECTIONS * (last_phase + 1) * CHUNK
    );
}
