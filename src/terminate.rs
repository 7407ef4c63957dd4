//! TLS material for terminate routes: PEM files read with `rustls::pki_types::pem`, and the one
//! rustls `ServerConfig` (and, for `backend_tls`, `ClientConfig`s) each route gets when its
//! config is loaded, so no connection builds or parses anything (SPEC "routes.toml", terminate).
//!
//! Pure: reads files and builds configs, never touches a socket and never imports tokio. The
//! handshake over the bytes the peeker already read is `proxy::handshake`. Every config is built
//! with [`provider`] explicitly, so a second rustls provider in the process can't make the
//! choice ambiguous.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The crypto provider every TLS config in sniroute uses: aws-lc-rs.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A fault in a PEM file or in what its contents make: the file and what is wrong. The path is
/// shown escaped, so the fault stays one line whatever the file is called.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", file.display().to_string().escape_debug())]
pub struct TerminateError {
    /// The PEM file at fault.
    pub file: PathBuf,
    /// What is wrong: lowercase, no trailing period.
    pub message: String,
}

impl TerminateError {
    fn new(file: &Path, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            message: message.into(),
        }
    }
}

/// Where a terminate route's certificate, key and client CA live, and the ALPN it offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TerminateFiles {
    /// PEM: the certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1) of the chain's leaf.
    pub key: PathBuf,
    /// PEM: the CAs client certificates must chain to; `None`: no client certificate asked for.
    pub client_ca: Option<PathBuf>,
    /// Protocols offered, most preferred first; empty: no ALPN.
    pub alpn: Vec<Box<[u8]>>,
}

/// The rustls server config for one terminate route.
///
/// # Errors
/// A file that can't be read, holds no certificate (or key), doesn't parse, or a key that
/// doesn't belong to the certificate; named by its path.
pub fn server_config(files: &TerminateFiles) -> Result<Arc<ServerConfig>, TerminateError> {
    let chain = certificates(&files.cert)?;
    let key_pem = read(&files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|error| TerminateError::new(&files.key, pem_message("private key", &error)))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| TerminateError::new(&files.cert, error.to_string()))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(path)?), provider())
                    .build()
                    .map_err(|error| TerminateError::new(path, error.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|error| {
        let message = match error {
            rustls::Error::InconsistentKeys(_) => {
                format!(
                    "key does not match the certificate in {}",
                    files.cert.display()
                )
            }
            other => other.to_string(),
        };
        TerminateError::new(&files.key, message)
    })?;
    config.alpn_protocols = files
        .alpn
        .iter()
        .map(|protocol| protocol.to_vec())
        .collect();
    Ok(Arc::new(config))
}

/// How a terminate route re-encrypts to its backend: whom it trusts and the name it verifies.
#[derive(Debug, Clone)]
pub struct BackendTls {
    /// The name sent as SNI and checked against the backend's certificate.
    pub server_name: ServerName<'static>,
    /// Offering no ALPN.
    plain: Arc<ClientConfig>,
    /// With `alpn_to_backend`: one config per protocol the route offers clients, offering just
    /// that one upstream.
    per_protocol: Vec<(Box<[u8]>, Arc<ClientConfig>)>,
}

impl BackendTls {
    /// The client config for a connection whose client negotiated `alpn`.
    pub fn client_config(&self, alpn: Option<&[u8]>) -> Arc<ClientConfig> {
        alpn.and_then(|negotiated| {
            self.per_protocol
                .iter()
                .find(|(protocol, _)| &protocol[..] == negotiated)
        })
        .map_or_else(|| self.plain.clone(), |(_, config)| config.clone())
    }
}

/// The client configs for re-encrypting to a backend whose certificate chains to `ca` and
/// names `server_name`; with `alpn` non-empty, one more per protocol.
///
/// # Errors
/// As [`server_config`], for `ca`.
pub fn backend_tls(
    ca: &Path,
    server_name: ServerName<'static>,
    alpn: &[Box<[u8]>],
) -> Result<BackendTls, TerminateError> {
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
        .build()
        .map_err(|error| TerminateError::new(ca, error.to_string()))?;
    let plain = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| TerminateError::new(ca, error.to_string()))?
        .with_webpki_verifier(verifier)
        .with_no_client_auth();
    let per_protocol = alpn
        .iter()
        .map(|protocol| {
            let mut config = plain.clone();
            config.alpn_protocols = vec![protocol.to_vec()];
            (protocol.clone(), Arc::new(config))
        })
        .collect();
    Ok(BackendTls {
        server_name,
        plain: Arc::new(plain),
        per_protocol,
    })
}

/// The client config of a pool's `tls` health check: a handshake that verifies the backend's
/// certificate against `ca`, or with no CA accepts any certificate (the check asks whether the
/// backend completes a handshake, not whom it claims to be). Offers no ALPN.
///
/// # Errors
/// The CA file can't be read or holds no usable certificate.
pub fn health_check(ca: Option<&Path>) -> Result<Arc<ClientConfig>, TerminateError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| TerminateError::new(ca.unwrap_or(Path::new("-")), error.to_string()))?;
    let config = match ca {
        Some(ca) => {
            let verifier =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                    .build()
                    .map_err(|error| TerminateError::new(ca, error.to_string()))?;
            builder.with_webpki_verifier(verifier)
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider()))),
    };
    Ok(Arc::new(config.with_no_client_auth()))
}

/// Accepts any certificate, while still checking that the handshake is signed by its key.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        signature: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            signature,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        signature: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            signature,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// PEM files are read up to this size; a chain of a few certificates is a few KiB.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// A PEM file's bytes: a regular file of at most [`MAX_PEM_BYTES`] (a device or a FIFO named by
/// mistake would otherwise hang the load).
fn read(path: &Path) -> Result<Vec<u8>, TerminateError> {
    let fault = |message: String| TerminateError::new(path, message);
    let file = std::fs::File::open(path).map_err(|error| fault(format!("cannot read: {error}")))?;
    let metadata = file
        .metadata()
        .map_err(|error| fault(format!("cannot read: {error}")))?;
    if !metadata.is_file() {
        return Err(fault("expected a regular file".to_owned()));
    }
    if metadata.len() > MAX_PEM_BYTES {
        return Err(fault(format!(
            "expected at most {MAX_PEM_BYTES} bytes, found {}",
            metadata.len()
        )));
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_PEM_BYTES), &mut bytes)
        .map_err(|error| fault(format!("cannot read: {error}")))?;
    Ok(bytes)
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TerminateError> {
    let pem = read(path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TerminateError::new(path, pem_message("certificate", &error)))?;
    if chain.is_empty() {
        return Err(TerminateError::new(
            path,
            "expected a PEM certificate, found none",
        ));
    }
    Ok(chain)
}

fn roots(path: &Path) -> Result<RootCertStore, TerminateError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(path)? {
        roots
            .add(certificate)
            .map_err(|error| TerminateError::new(path, format!("bad CA certificate: {error}")))?;
    }
    Ok(roots)
}

fn pem_message(what: &str, error: &rustls::pki_types::pem::Error) -> String {
    match error {
        rustls::pki_types::pem::Error::NoItemsFound => {
            format!("expected a PEM {what}, found none")
        }
        other => format!("bad PEM: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::Pki;

    fn names() -> Vec<String> {
        vec!["admin.test".to_owned()]
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn files(dir: &Path, cert: &str, key: &str) -> TerminateFiles {
        TerminateFiles {
            cert: write(dir, "cert.pem", cert),
            key: write(dir, "key.pem", key),
            client_ca: None,
            alpn: vec![Box::from(&b"h2"[..])],
        }
    }

    #[test]
    fn a_matching_pair_builds_a_config_offering_the_routes_alpn() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = Pki::new().unwrap().issue_pem(&names()).unwrap();
        let config = server_config(&files(dir.path(), &cert, &key)).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_naming_the_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new().unwrap();
        let (cert, _) = pki.issue_pem(&names()).unwrap();
        let (_, other_key) = pki.issue_pem(&names()).unwrap();
        let files = files(dir.path(), &cert, &other_key);
        let error = server_config(&files).unwrap_err();
        assert_eq!(error.file, files.key);
        assert_eq!(
            error.message,
            format!(
                "key does not match the certificate in {}",
                files.cert.display()
            )
        );
    }

    #[test]
    fn missing_and_empty_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = Pki::new().unwrap().issue_pem(&names()).unwrap();
        let mut files = files(dir.path(), &cert, &key);
        files.key = dir.path().join("absent.key");
        let error = server_config(&files).unwrap_err().to_string();
        assert!(error.starts_with(&format!("{}: cannot read: ", files.key.display())));

        files.key = write(dir.path(), "empty.key", "");
        let error = server_config(&files).unwrap_err().to_string();
        assert_eq!(
            error,
            format!(
                "{}: expected a PEM private key, found none",
                files.key.display()
            )
        );

        files.cert = write(dir.path(), "key-as-cert.pem", &key);
        let error = server_config(&files).unwrap_err().to_string();
        assert_eq!(
            error,
            format!(
                "{}: expected a PEM certificate, found none",
                files.cert.display()
            )
        );
    }

    #[test]
    fn a_device_or_a_directory_is_refused_and_odd_names_stay_on_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = Pki::new().unwrap().issue_pem(&names()).unwrap();
        let mut files = files(dir.path(), &cert, &key);
        files.cert = PathBuf::from("/dev/zero");
        let error = server_config(&files).unwrap_err().to_string();
        assert_eq!(error, "/dev/zero: expected a regular file");
        files.cert = dir.path().join("two\nlines.pem");
        let error = server_config(&files).unwrap_err().to_string();
        assert!(
            !error.contains('\n') && error.contains("two\\nlines.pem"),
            "{error}"
        );
    }

    #[test]
    fn backend_tls_offers_only_the_negotiated_protocol_upstream() {
        let dir = tempfile::tempdir().unwrap();
        let ca = write(dir.path(), "ca.pem", &Pki::new().unwrap().ca_pem());
        let name = ServerName::try_from("admin.internal").unwrap();
        let alpn = [Box::from(&b"h2"[..]), Box::from(&b"http/1.1"[..])];
        let tls = backend_tls(&ca, name, &alpn).unwrap();
        assert_eq!(
            tls.client_config(Some(b"http/1.1")).alpn_protocols,
            vec![b"http/1.1".to_vec()]
        );
        assert!(tls.client_config(None).alpn_protocols.is_empty());
    }
}
