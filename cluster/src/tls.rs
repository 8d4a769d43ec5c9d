//! Mutually authenticated TLS between nodes (rustls with the `ring` provider): each node
//! presents its certificate and accepts only peers whose certificate the cluster's CA signed.

use std::path::Path;
use std::sync::Arc;

use ractor::ActorRef;
use ractor_cluster::NodeServerMessage;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, RootCertStore};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::node::TlsFiles;
use crate::ClusterError;

/// Dials peers over TLS.
#[derive(Clone)]
pub(crate) struct Connector(TlsConnector);

impl Connector {
    /// Connects to `address` (`host:port`), verifying that the peer's certificate names `host`.
    pub(crate) async fn dial(
        &self,
        server: &ActorRef<NodeServerMessage>,
        address: &str,
    ) -> Result<(), String> {
        let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
        let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
            .map_err(|err| format!("{host} is not a valid TLS server name: {err}"))?;
        ractor_cluster::client_connect_enc(server, address, self.0.clone(), name)
            .await
            .map_err(|err| err.to_string())
    }
}

/// The acceptor for incoming and the connector for outgoing node connections.
pub(crate) fn load(files: &TlsFiles) -> Result<(TlsAcceptor, Connector), ClusterError> {
    let certs = certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|err| bad(&files.key, err))?;
    let mut roots = RootCertStore::empty();
    for ca in certificates(&files.ca)? {
        roots.add(ca).map_err(|err| bad(&files.ca, err))?;
    }
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .map_err(|err| bad(&files.ca, err))?;
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| ClusterError::Config(err.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs.clone(), key.clone_key())
        .map_err(|err| bad(&files.cert, err))?;
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| ClusterError::Config(err.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|err| bad(&files.cert, err))?;
    Ok((
        TlsAcceptor::from(Arc::new(server)),
        Connector(TlsConnector::from(Arc::new(client))),
    ))
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClusterError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|err| bad(path, err))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| bad(path, err))?;
    if certs.is_empty() {
        return Err(bad(path, "no certificate in the file"));
    }
    Ok(certs)
}

fn bad(path: &Path, err: impl std::fmt::Display) -> ClusterError {
    ClusterError::Config(format!("cluster TLS file {}: {err}", path.display()))
}
