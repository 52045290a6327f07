//! `greeter`: an example gRPC service of someone else's, built on
//! handover's public API alone. A tonic server (generated from
//! `proto/greeter.proto`, see `src/greeter.rs`) and the kit's whole process
//! around it: socket activation, readiness, the drain, in-place reloads.
//!
//! The drain needs nothing from it. Its calls are short, so they finish
//! within the drain; a stream still open one second before the drain
//! deadline would get `UNAVAILABLE` from the kit, and the kit answers
//! `/readyz`, which tonic's router would otherwise answer `200` with
//! `grpc-status: 12` whatever the instance's state.

mod greeter;

use std::process::ExitCode;
use std::time::Duration;

use greeter::greeter_server::{Greeter, GreeterServer};
use greeter::{GreetingsRequest, HelloReply, HelloRequest};
use handover::{Context, Service};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// Streams longer than this are refused: they would outlast the drain.
const MAX_STREAM: Duration = Duration::from_secs(5);

struct Greetings {
    ctx: Context,
}

#[tonic::async_trait]
impl Greeter for Greetings {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        Ok(Response::new(self.reply(&request.into_inner().name)))
    }

    type GreetingsStream = ReceiverStream<Result<HelloReply, Status>>;

    async fn greetings(
        &self,
        request: Request<GreetingsRequest>,
    ) -> Result<Response<Self::GreetingsStream>, Status> {
        let GreetingsRequest {
            name,
            count,
            every_ms,
        } = request.into_inner();
        let every = Duration::from_millis(every_ms.into());
        if every * count > MAX_STREAM {
            return Err(Status::invalid_argument(format!(
                "{count} greetings every {every_ms} ms last more than {MAX_STREAM:?}"
            )));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let reply = self.reply(&name);
        tokio::spawn(async move {
            for _ in 0..count {
                if tx.send(Ok(reply.clone())).await.is_err() {
                    return; // The client went away.
                }
                tokio::time::sleep(every).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

impl Greetings {
    fn reply(&self, name: &str) -> HelloReply {
        HelloReply {
            message: format!("hello, {name}"),
            instance: self.ctx.instance(),
        }
    }
}

fn main() -> ExitCode {
    Service::new("greeter")
        .version(env!("CARGO_PKG_VERSION"))
        .about("An example gRPC service built on handover")
        .run(|ctx| tonic::service::Routes::new(GreeterServer::new(Greetings { ctx })))
}
