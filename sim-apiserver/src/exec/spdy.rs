//! exec and attach over SPDY (`X-Stream-Protocol-Version: v4.channel.k8s.io`): the client
//! opens one stream per purpose, named by its `streamtype` header (`error`, `stdin`, `stdout`,
//! `stderr`, `resize`); the command starts once every stream its options call for is open.
//! Output ends with FIN on `stdout`/`stderr`; the exit status is one `Status` JSON on `error`,
//! then FIN. Stdin ends when the client half-closes `stdin`.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::{Container, Process, Program, StreamOptions, exit_status, failure_status};
use crate::spdy::session::{self, IncomingStream, StreamWriter};

/// The exec/attach side of a SPDY session.
pub struct Handler {
    start: Option<(Arc<Container>, Program, StreamOptions)>,
    streams: HashMap<&'static str, IncomingStream>,
    running: Option<AbortHandle>,
    error: Option<StreamWriter>,
}

impl Handler {
    /// A handler that runs `program` in `ctr` once the streams `opts` needs are open.
    pub fn new(ctr: Arc<Container>, program: Program, opts: StreamOptions) -> Self {
        Self {
            start: Some((ctr, program, opts)),
            streams: HashMap::new(),
            running: None,
            error: None,
        }
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        if let Some(h) = &self.running {
            h.abort();
        }
    }
}

impl session::Handler for Handler {
    fn stream(&mut self, stream: IncomingStream) {
        let kind = match stream.header("streamtype") {
            Some("error") => "error",
            Some("stdin") => "stdin",
            Some("stdout") => "stdout",
            Some("stderr") => "stderr",
            Some("resize") => "resize",
            other => {
                tracing::debug!(streamtype = ?other, "exec over SPDY: ignoring a stream of unknown type");
                return;
            }
        };
        if kind == "error" {
            self.error = Some(stream.writer.clone());
        }
        self.streams.insert(kind, stream);
        let Some((_, _, opts)) = &self.start else {
            return;
        };
        let wanted = [
            ("error", true),
            ("stdin", opts.stdin),
            ("stdout", opts.stdout),
            ("stderr", opts.stderr),
        ];
        if wanted
            .iter()
            .any(|(k, w)| *w && !self.streams.contains_key(k))
        {
            return;
        }
        let Some((ctr, program, opts)) = self.start.take() else {
            return;
        };
        let streams = std::mem::take(&mut self.streams);
        let task = tokio::spawn(run(ctr, program, opts, streams));
        self.running = Some(task.abort_handle());
    }

    fn on_idle(&mut self, timeout: std::time::Duration) {
        if let Some(h) = &self.running {
            h.abort();
        }
        if let Some(w) = &self.error {
            let status = failure_status(
                "Timeout",
                &format!("the session was idle for {timeout:?} and was closed"),
            );
            w.try_write_final(Bytes::from(status.to_string()));
        }
    }
}

async fn forward(mut rx: mpsc::Receiver<Bytes>, to: Option<StreamWriter>) {
    while let Some(b) = rx.recv().await {
        if let Some(w) = &to
            && w.write(b).await.is_err()
        {
            break;
        }
    }
    if let Some(w) = to {
        let _ = w.finish().await;
    }
}

async fn run(
    ctr: Arc<Container>,
    program: Program,
    opts: StreamOptions,
    mut streams: HashMap<&'static str, IncomingStream>,
) {
    let argv = match &program {
        Program::Exec(a) => a.clone(),
        Program::Attach => Vec::new(),
    };
    let Process {
        stdin,
        stdout,
        stderr,
        task,
    } = Process::start(ctr, program, &opts);
    let abort = task.abort_handle();
    let stdin_stream = streams.remove("stdin");
    let out = streams.remove("stdout").map(|s| s.writer);
    let err = streams.remove("stderr").map(|s| s.writer);
    let Some(error) = streams.remove("error") else {
        abort.abort();
        return;
    };
    let pump_in = async move {
        if let (Some(mut s), Some(tx)) = (stdin_stream, stdin) {
            while let Some(b) = s.data.recv().await {
                if tx.send(b).await.is_err() {
                    break;
                }
            }
        }
        // Dropping the sender is end of file for the command.
        std::future::pending::<()>().await;
    };
    let outputs = async { tokio::join!(forward(stdout, out), forward(stderr, err)) };
    tokio::select! {
        _ = outputs => {}
        () = pump_in => {}
    }
    let status = match task.await {
        Ok(code) => exit_status(code, &argv),
        Err(e) => failure_status("InternalError", &format!("the command failed: {e}")),
    };
    let _ = error.writer.write(Bytes::from(status.to_string())).await;
    let _ = error.writer.finish().await;
}
