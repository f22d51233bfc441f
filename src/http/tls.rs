//! TLS on both sides: terminating it on the proxy listener
//! (`--tls-cert`/`--tls-key`) and `https://` upstreams verified against the
//! system's roots plus an optional private CA (`--upstream-ca`). rustls with
//! the ring provider: no OpenSSL, no C toolchain beyond ring's own.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Why a TLS configuration could not be made; `flag` names the setting to
/// look at.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{flag} {}: {source}", path.display())]
    Pem {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{flag} {}: no PEM certificate in it", path.display())]
    NoCertificate { flag: &'static str, path: PathBuf },
    #[error("{flag}: {source}")]
    Rustls {
        flag: &'static str,
        #[source]
        source: rustls::Error,
    },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certificates(
    path: &Path,
    flag: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Pem {
            flag,
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            flag,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The listener's TLS configuration, offering h2 and HTTP/1.1 by ALPN.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = read_certificates(cert, "--tls-cert")?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Pem {
        flag: "--tls-key",
        path: key.to_path_buf(),
        source,
    })?;
    let rustls = |flag| move |source| TlsError::Rustls { flag, source };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rustls("--tls-cert"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(rustls("--tls-cert/--tls-key"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The upstream client's TLS configuration: system roots, plus `extra_ca`.
pub fn client_config(extra_ca: Option<&Path>) -> Result<ClientConfig, TlsError> {
    let rustls = |source| TlsError::Rustls {
        flag: "--upstream-ca",
        source,
    };
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if let Some(path) = extra_ca {
        for cert in read_certificates(path, "--upstream-ca")? {
            roots.add(cert).map_err(rustls)?;
        }
    } else if added == 0 {
        tracing::warn!(
            "no system root certificates found: https upstreams will fail without --upstream-ca"
        );
    }
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rustls)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
