//! An HTTP/3 backend for trying QUIC through sniroute (`cargo run --example quic-demo`, README
//! "QUIC") and for the tests that drive a browser: h3 over quinn, with a certificate from the
//! demo's throwaway CA. Tooling, not product: built only with the `quic-demo` feature.

use std::net::SocketAddr;
use std::sync::Arc;

use quinn::crypto::rustls::QuicServerConfig;
use sha2::Digest;

use crate::demo::{Pki, PkiError};

/// A running HTTP/3 server: every request gets a page saying `h3 backend for NAME: METHOD PATH`.
#[derive(Debug)]
pub struct H3Backend {
    /// Its UDP address.
    pub address: SocketAddr,
    /// Its certificate's SubjectPublicKeyInfo, SHA-256, base64: what Chromium's
    /// `--ignore-certificate-errors-spki-list` takes, to trust it without installing the CA.
    pub spki: String,
    endpoint: quinn::Endpoint,
}

impl H3Backend {
    /// Serves `name` on `address` (UDP) on the current tokio runtime, until dropped.
    ///
    /// # Errors
    /// The certificate can't be made, or the address can't be bound.
    pub fn start(pki: &Pki, address: SocketAddr, name: &str) -> anyhow::Result<Self> {
        let (certificate, key) = pki.issue(&[name.to_owned()])?;
        let spki = {
            let (_, parsed) = x509_parser::parse_x509_certificate(&certificate)
                .map_err(|_| anyhow::anyhow!("cannot read the certificate it just made"))?;
            base64(&sha2::Sha256::digest(
                parsed.tbs_certificate.subject_pki.raw,
            ))
        };
        let mut tls = rustls::ServerConfig::builder_with_provider(crate::terminate::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(PkiError::from)?
            .with_no_client_auth()
            .with_single_cert(vec![certificate], key)
            .map_err(PkiError::from)?;
        tls.alpn_protocols = vec![b"h3".to_vec()];
        let crypto = QuicServerConfig::try_from(tls)?;
        let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let endpoint = quinn::Endpoint::server(config, address)?;
        let address = endpoint.local_addr()?;
        let name: Arc<str> = name.into();
        let accepting = endpoint.clone();
        tokio::spawn(async move {
            while let Some(incoming) = accepting.accept().await {
                tokio::spawn(serve(incoming, name.clone()));
            }
        });
        Ok(Self {
            address,
            spki,
            endpoint,
        })
    }
}

impl Drop for H3Backend {
    fn drop(&mut self) {
        self.endpoint.close(0u32.into(), b"");
    }
}

/// One connection's requests.
async fn serve(incoming: quinn::Incoming, name: Arc<str>) -> anyhow::Result<()> {
    let connection = h3_quinn::Connection::new(incoming.await?);
    let mut h3 = h3::server::Connection::<_, bytes::Bytes>::new(connection).await?;
    while let Some(resolver) = h3.accept().await? {
        let name = name.clone();
        tokio::spawn(async move {
            let (request, mut stream) = resolver.resolve_request().await?;
            let body = format!(
                "<!doctype html><title>{name}</title><p>h3 backend for {name}: {} {}</p>\n",
                request.method(),
                request.uri().path()
            );
            let response = http::Response::builder()
                .status(200)
                .header("content-type", "text/html")
                .body(())?;
            stream.send_response(response).await?;
            stream.send_data(bytes::Bytes::from(body)).await?;
            stream.finish().await?;
            anyhow::Ok(())
        });
    }
    Ok(())
}

/// Standard base64, padded.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let word = chunk.iter().enumerate().fold(0u32, |word, (at, &byte)| {
            word | u32::from(byte) << (16 - 8 * at)
        });
        for at in 0..4 {
            match at <= chunk.len() {
                true => out.push(ALPHABET[(word >> (18 - 6 * at) & 63) as usize] as char),
                false => out.push('='),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_pads_like_rfc_4648() {
        for (input, output) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
        ] {
            assert_eq!(super::base64(input.as_bytes()), output);
        }
    }
}
