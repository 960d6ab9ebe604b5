//! What the HTTP servers (labeling, serving) share: the accept loop with its limits, and the
//! shutdown signal.

pub mod connections;

/// Waits for Ctrl-C or SIGTERM. The handlers are installed when this is called, not when the
/// future is first polled: a server calls it before announcing its address, so that a signal sent
/// as soon as that line appears stops the server gracefully instead of killing it.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let listen = |kind: SignalKind, name: &str| signal(kind).map_err(|error| tracing::error!(%error, "cannot listen for {name}")).ok();
    let (interrupt, terminate) = (listen(SignalKind::interrupt(), "Ctrl-C"), listen(SignalKind::terminate(), "SIGTERM"));
    let received = |stream: Option<tokio::signal::unix::Signal>| async move {
        match stream {
            Some(mut stream) => {
                stream.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    async move {
        tokio::select! {
            () = received(interrupt) => {}
            () = received(terminate) => {}
        }
        tracing::info!("shutting down: finishing requests in flight");
    }
}
