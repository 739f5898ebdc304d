//! TLS for the QUIC endpoint: the merger's certificate (given, or self-signed on first
//! start) and the edge side's verifier that pins its SHA-256 fingerprint.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a TLS identity or configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate without its key, or a key without its certificate.
    #[error("a TLS certificate needs its private key and a key its certificate: give both, or neither for a self-signed certificate")]
    HalfIdentity,
    /// A certificate or key file could not be read or written.
    #[error("{action} {path}: {source}")]
    File {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{what} in {path} is unreadable: {source}")]
    Pem {
        /// Certificate or key.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: rustls::pki_types::pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("no certificate in {0}")]
    NoCertificate(PathBuf),
    /// A self-signed certificate could not be generated.
    #[error("generating a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration (for a server: the certificate and key do not match).
    #[error("TLS configuration refused (do the certificate and key match?): {0}")]
    Rustls(#[from] rustls::Error),
    /// QUIC cannot run over this TLS configuration.
    #[error("QUIC cannot use this TLS configuration: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
}


fn file_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> TlsError + 'a {
    move |source| TlsError::File {
        action,
        path: path.to_owned(),
        source,
    }
}

/// ALPN protocol of the edge-to-merger protocol.
pub const ALPN: &[u8] = b"tally/1";

/// The rustls crypto provider Tally uses (ring: no C toolchain beyond cc needed).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and its key.
pub struct Identity {
    /// Leaf first.
    pub certs: Vec<CertificateDer<'static>>,
    /// The leaf's key.
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    /// Hex SHA-256 of the leaf certificate: what edges pin.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.certs[0])
    }
}

/// Hex SHA-256 of a DER certificate.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    hex::encode(Sha256::digest(cert.as_ref()))
}

/// Loads `cert`/`key` PEM files when given; otherwise loads or creates a self-signed
/// certificate under `dir` (`merger-cert.pem`, `merger-key.pem`).
pub fn load_or_generate(cert: Option<&Path>, key: Option<&Path>, dir: &Path) -> Result<(Identity, bool), TlsError> {
    let (cert_path, key_path, may_create) = match (cert, key) {
        (Some(c), Some(k)) => (c.to_owned(), k.to_owned(), false),
        (None, None) => (dir.join("merger-cert.pem"), dir.join("merger-key.pem"), true),
        _ => return Err(TlsError::HalfIdentity),
    };
    let mut created = false;
    if may_create && !cert_path.exists() {
        std::fs::create_dir_all(dir).map_err(file_err("creating", dir))?;
        let ck = rcgen::generate_simple_self_signed(vec!["tally-merger".into(), "localhost".into()])?;
        std::fs::write(&key_path, ck.signing_key.serialize_pem()).map_err(file_err("writing", &key_path))?;
        std::fs::write(&cert_path, ck.cert.pem()).map_err(file_err("writing", &cert_path))?;
        created = true;
    }
    let pem = |what: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::Pem { what, path, source }
    };
    let certs = CertificateDer::pem_file_iter(&cert_path)
        .map_err(pem("certificate", &cert_path))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem("certificate", &cert_path))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(cert_path));
    }
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(pem("private key", &key_path))?;
    Ok((Identity { certs, key }, created))
}

/// Server-side QUIC config for an identity.
pub fn server_config(id: &Identity) -> Result<quinn::ServerConfig, TlsError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(id.certs.clone(), id.key.clone_key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(256u32.into());
    transport.keep_alive_interval(Some(std::time::Duration::from_secs(5)));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// Server-side TLS for the HTTPS API (HTTP/1.1) with the same identity as QUIC.
pub fn https_server_config(id: &Identity) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(id.certs.clone(), id.key.clone_key())?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

/// Client-side TLS for the HTTPS API that pins the merger's fingerprint (for edges and
/// tests that POST frames over HTTPS to a self-signed merger).
pub fn https_client_config(fingerprint: &str) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(PinnedCert::new(fingerprint))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

/// Accepts exactly the server certificate whose SHA-256 fingerprint is pinned.
#[derive(Debug)]
pub struct PinnedCert {
    fingerprint: String,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedCert {
    /// Pins a hex fingerprint (as printed by the merger).
    pub fn new(fingerprint: &str) -> Arc<PinnedCert> {
        Arc::new(PinnedCert {
            fingerprint: fingerprint.trim().to_ascii_lowercase().replace(':', ""),
            algorithms: provider().signature_verification_algorithms,
        })
    }
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if fingerprint(end_entity) == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "merger certificate does not match the pinned fingerprint".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Client-side QUIC config that pins the merger's fingerprint.
pub fn client_config(fingerprint: &str) -> Result<quinn::ClientConfig, TlsError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(PinnedCert::new(fingerprint))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    // A merger that vanished (killed, unplugged) is noticed within seconds, so frames
    // are resent after it comes back rather than waiting on a dead connection.
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(std::time::Duration::from_secs(1)));
    transport.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(5_000))));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}
