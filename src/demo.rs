//! The parts of `sniroute demo`, also used by the integration tests: a throwaway certificate
//! authority ([`Pki`]) and TLS backends that answer with their own name ([`TlsBackend`]), so that
//! which backend a client reached is proven by what it answers.
//!
//! Certificates are made in memory at start-up; no key ever touches the disk.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::proxy::AcceptErrors;

/// Why demo certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused the parameters or could not sign.
    #[error("cannot make a certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused the certificate or key.
    #[error("cannot use the certificate: {0}")]
    Tls(#[from] rustls::Error),
}

/// A certificate authority that lives in memory for one run.
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    /// A new CA with a fresh key.
    ///
    /// # Errors
    /// [`PkiError::Certificate`] if rcgen can't make the key or certificate.
    pub fn new() -> Result<Self, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "sniroute demo CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Ok(Self {
            ca: CertifiedIssuer::self_signed(params, KeyPair::generate()?)?,
        })
    }

    /// The CA certificate, PEM, for `curl --cacert`.
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// The CA certificate, DER, for a rustls client's root store.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }

    /// A certificate for `names` (wildcards like `*.example.com` allowed) signed by this CA,
    /// and its private key.
    ///
    /// # Errors
    /// [`PkiError::Certificate`] for a name rcgen refuses.
    pub fn issue(
        &self,
        names: &[String],
    ) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), PkiError> {
        let (certificate, key) = self.issue_with_key(names)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((certificate.der().clone(), key))
    }

    /// As [`Pki::issue`], in PEM: the certificate and its private key, as files for sniroute's
    /// `terminate` or (concatenated) HAProxy's `crt`.
    ///
    /// # Errors
    /// As [`Pki::issue`].
    pub fn issue_pem(&self, names: &[String]) -> Result<(String, String), PkiError> {
        let (certificate, key) = self.issue_with_key(names)?;
        Ok((certificate.pem(), key.serialize_pem()))
    }

    /// A client certificate, for mutual TLS, whose subject is `CN=common_name`, and its key.
    ///
    /// # Errors
    /// As [`Pki::issue`].
    pub fn issue_client(
        &self,
        common_name: &str,
    ) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let certificate = params.signed_by(&key, &self.ca)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((certificate.der().clone(), key))
    }

    fn issue_with_key(&self, names: &[String]) -> Result<(rcgen::Certificate, KeyPair), PkiError> {
        let key = KeyPair::generate()?;
        let certificate = CertificateParams::new(names.to_vec())?.signed_by(&key, &self.ca)?;
        Ok((certificate, key))
    }

    /// A rustls server config presenting a certificate for `names`, negotiating `alpn` (none:
    /// no ALPN negotiation).
    ///
    /// # Errors
    /// As [`Pki::issue`], or [`PkiError::Tls`].
    pub fn server_config(
        &self,
        names: &[String],
        alpn: &[&str],
    ) -> Result<Arc<ServerConfig>, PkiError> {
        let (certificate, key) = self.issue(names)?;
        let mut config = ServerConfig::builder_with_provider(crate::terminate::provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![certificate], key)?;
        config.alpn_protocols = alpn
            .iter()
            .map(|protocol| protocol.as_bytes().to_vec())
            .collect();
        Ok(Arc::new(config))
    }
}

/// How long a demo backend waits for a handshake or a request before hanging up.
const BACKEND_PATIENCE: Duration = Duration::from_secs(10);
/// Longest request head a demo backend reads.
const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// A TLS server that answers every request with an HTTP/1.1 response naming itself, the SNI it
/// saw and the ALPN it negotiated: `alpha: sni=alpha.demo.test alpn=http/1.1`. Its accept loop
/// and connections run on its own tracker until [`TlsBackend::stop`].
#[derive(Debug)]
pub struct TlsBackend {
    /// Where it listens.
    pub address: SocketAddr,
    tasks: TaskTracker,
    stopping: CancellationToken,
}

impl TlsBackend {
    /// Binds `address` (port 0 for any) and serves until stopped (or the runtime ends). Listening
    /// before it returns, so a client may connect at once.
    ///
    /// # Errors
    /// The address can't be bound.
    pub async fn start(
        address: SocketAddr,
        name: &str,
        config: Arc<ServerConfig>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(address).await?;
        let address = listener.local_addr()?;
        let name: Arc<str> = name.into();
        let acceptor = TlsAcceptor::from(config);
        let tasks = TaskTracker::new();
        let stopping = CancellationToken::new();
        let (spawner, stop) = (tasks.clone(), stopping.clone());
        tasks.spawn(async move {
            let mut errors = AcceptErrors::default();
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    () = stop.cancelled() => return,
                };
                match accepted {
                    Ok((stream, _)) => {
                        errors.ok();
                        spawner.spawn(answer(stream, acceptor.clone(), name.clone()));
                    }
                    Err(error) => {
                        tokio::time::sleep(errors.failed(Some(address), &error)).await;
                    }
                }
            }
        });
        Ok(Self {
            address,
            tasks,
            stopping,
        })
    }

    /// Stops accepting and waits for the connections being answered (each bounded in time).
    pub async fn stop(self) {
        self.stopping.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

async fn answer(stream: TcpStream, acceptor: TlsAcceptor, name: Arc<str>) -> std::io::Result<()> {
    let exchange = async {
        let mut tls = acceptor.accept(stream).await?;
        let mut head = Vec::new();
        let mut chunk = [0u8; 1024];
        while !head.windows(4).any(|window| window == b"\r\n\r\n") && head.len() < MAX_REQUEST_HEAD
        {
            match tls.read(&mut chunk).await? {
                0 => break,
                read => head.extend_from_slice(&chunk[..read]),
            }
        }
        let connection = tls.get_ref().1;
        let sni = connection.server_name().unwrap_or("-");
        let alpn = connection.alpn_protocol().map_or_else(
            || "-".to_owned(),
            |p| String::from_utf8_lossy(p).into_owned(),
        );
        let body = format!("{name}: sni={sni} alpn={alpn}\n");
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        tls.write_all(response.as_bytes()).await?;
        tls.shutdown().await
    };
    tokio::time::timeout(BACKEND_PATIENCE, exchange).await?
}
