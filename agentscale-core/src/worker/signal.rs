//! The shutdown signal every worker process waits for.

/// Completes when the process is asked to stop: SIGTERM (what Kubernetes
/// sends before `terminationGracePeriodSeconds` runs out) or Ctrl-C (SIGINT).
/// Pass it to [`Worker::run_until`](super::Worker::run_until): the worker then
/// stops leasing, lets in-flight tasks finish within its grace period and
/// hands the rest back uncharged.
///
/// If the SIGTERM handler cannot be installed (not on Unix, or the runtime
/// refuses), only Ctrl-C is awaited, and a warning is logged.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; waiting for Ctrl-C only");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sigterm_completes_the_signal() {
        use tokio::signal::unix::{signal, SignalKind};
        // Installed first, so a SIGTERM sent before `shutdown_signal` listens
        // cannot end the test process; resent until it is seen.
        let _guard = signal(SignalKind::terminate()).expect("install SIGTERM handler");
        let mut waiting = tokio::spawn(shutdown_signal());
        let pid = std::process::id().to_string();
        for _ in 0..100 {
            let status = std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .expect("run kill");
            assert!(status.success());
            if tokio::time::timeout(std::time::Duration::from_millis(100), &mut waiting)
                .await
                .is_ok()
            {
                return;
            }
        }
        panic!("shutdown_signal did not complete after repeated SIGTERMs");
    }
}
