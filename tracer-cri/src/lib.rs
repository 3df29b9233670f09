//! The Kubernetes Container Runtime Interface, v1 (`runtime.v1`): the API kubelet speaks to
//! containerd and CRI-O over their unix sockets. Generated at build time from
//! `proto/api.proto`; only the client side, and a channel to a runtime's unix socket.

use std::{path::Path, time::Duration};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("runtime.v1");
}

/// A channel to the runtime listening on `socket`, each call limited to `timeout`. It
/// connects on first use (and again after the runtime restarts), so creating it never fails;
/// it must be created inside a tokio runtime, which then serves its calls.
pub fn unix_channel(socket: &Path, timeout: Duration) -> Channel {
    let socket = socket.to_path_buf();
    // The transport wants a URI; the connector ignores it and opens the socket.
    Endpoint::from_static("http://cri.invalid").timeout(timeout).connect_timeout(timeout).connect_with_connector_lazy(
        tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }),
    )
}
