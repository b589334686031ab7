//! What the driver tests share: a simulator server task that stops when
//! the test says so or when it is dropped.
#![allow(dead_code)]

use std::future::Future;
use std::pin::Pin;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The "stop now" future handed to a server.
pub type Stopped = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One running simulator server.
pub struct Served {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Served {
    /// Spawn `serve(stopped)`; `stopped` completes on [`Served::shutdown`]
    /// or drop.
    pub fn spawn<F, Fut>(serve: F) -> Served
    where
        F: FnOnce(Stopped) -> Fut,
        Fut: Future<Output = std::io::Result<()>> + Send + 'static,
    {
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(Box::pin(async move {
            let _ = rx.await;
        })));
        Served {
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stop the server and wait for it; its error, if it had one.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await??;
        }
        Ok(())
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}
