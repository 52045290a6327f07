//! `greeter`: an example gRPC service of someone else's, built on
//! handover's public API alone. A tonic server (generated from
//! `proto/greeter.proto`, see `src/greeter.rs`) and the kit's whole process
//! around it: socket activation, readiness, the drain, in-place reloads.
//!
//! Its unary calls are short and finish within the drain. Its streams
//! watch the drain and end with `UNAVAILABLE` as it starts, which gRPC
//! clients retry on a new connection; a stream that did not would get the
//! same status from the kit one second before the drain deadline. The kit
//! answers `/readyz`, which tonic's router would otherwise answer `200` with
//! `grpc-status: 12` whatever the instance's state.

mod greeter;

use std::process::ExitCode;
use std::time::Duration;

use greeter::greeter_server::{Greeter, GreeterServer};
use greeter::{GreetingsRequest, HelloReply, HelloRequest};
use handover::{Context, Service};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Streams longer than this are refused.
const MAX_STREAM: Duration = Duration::from_secs(600);

struct Greetings {
    ctx: Context,
}

/// What a stream ends with when the drain starts: UNAVAILABLE, which gRPC
/// clients read as "try again", and which they then do on a new connection,
/// to a sibling or the new process.
fn draining() -> Status {
    Status::unavailable("the instance is draining; call again")
}

#[tonic::async_trait]
impl Greeter for Greetings {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        Ok(Response::new(self.reply(&request.into_inner().name, 0)))
    }

    type GreetingsStream = ReceiverStream<Result<HelloReply, Status>>;

    /// A server stream that ends as the drain starts, as a stream that
    /// lasts should: the drain then does not wait for it.
    async fn greetings(
        &self,
        request: Request<GreetingsRequest>,
    ) -> Result<Response<Self::GreetingsStream>, Status> {
        let GreetingsRequest {
            name,
            count,
            every_ms,
            first,
        } = request.into_inner();
        let every = Duration::from_millis(every_ms.into());
        if every * count > MAX_STREAM {
            return Err(Status::invalid_argument(format!(
                "{count} greetings every {every_ms} ms last more than {MAX_STREAM:?}"
            )));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let this = Greetings {
            ctx: self.ctx.clone(),
        };
        tokio::spawn(async move {
            let drain = this.ctx.drain().clone();
            for seq in first..first.saturating_add(count) {
                if tx.send(Ok(this.reply(&name, seq))).await.is_err() {
                    return; // The client went away.
                }
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    _ = drain.draining() => {
                        let _ = tx.send(Err(draining())).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type ChatStream = ReceiverStream<Result<HelloReply, Status>>;

    /// A greeting for each request, until the client ends its side or the
    /// drain starts.
    async fn chat(
        &self,
        request: Request<Streaming<HelloRequest>>,
    ) -> Result<Response<Self::ChatStream>, Status> {
        let mut requests = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let this = Greetings {
            ctx: self.ctx.clone(),
        };
        tokio::spawn(async move {
            let drain = this.ctx.drain().clone();
            let mut seq = 0;
            loop {
                let next = tokio::select! {
                    next = requests.message() => next,
                    _ = drain.draining() => {
                        let _ = tx.send(Err(draining())).await;
                        return;
                    }
                };
                let reply = match next {
                    Ok(Some(request)) => Ok(this.reply(&request.name, seq)),
                    Ok(None) => return, // The client is done.
                    Err(status) => Err(status),
                };
                let ended = reply.is_err();
                if tx.send(reply).await.is_err() || ended {
                    return;
                }
                seq += 1;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

impl Greetings {
    fn reply(&self, name: &str, seq: u32) -> HelloReply {
        HelloReply {
            message: format!("hello, {name}"),
            instance: self.ctx.instance(),
            seq,
        }
    }
}

fn main() -> ExitCode {
    Service::new("greeter")
        .version(env!("CARGO_PKG_VERSION"))
        .about("An example gRPC service built on handover")
        .run(|ctx| tonic::service::Routes::new(GreeterServer::new(Greetings { ctx })))
}
