//! Request-response codec: a u32 length prefix, then a bincode `Envelope`.
//! Oversized frames are refused before reading them.

use super::wire::{self, Envelope, Request, Response, MAX_REQUEST, MAX_RESPONSE};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use std::io;

#[derive(Clone, Copy, Debug, Default)]
pub struct SyncCodec;

thread_local! {
    /// A frame buffer to reuse: a fresh zeroed 4 MiB `Vec` per chunk answer was 2.5%
    /// of a receiving node's CPU (memset, plus page faults after glibc returned it).
    static SPARE: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Largest buffer kept in `SPARE` (one per thread that reads frames: the network
/// workers and the blocking pool, so a few times this at most; chunk answers are
/// ~4 MiB).
const MAX_SPARE: usize = 8 << 20;

/// Reads one length-prefixed frame and decodes it from a reused buffer.
async fn read_frame<T: AsyncRead + Unpin, R>(
    io: &mut T,
    limit: usize,
    decode: impl FnOnce(&[u8]) -> R,
) -> io::Result<R> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the {limit}-byte limit"),
        ));
    }
    let mut buf = SPARE.with(|s| s.take());
    if buf.len() < len {
        buf.resize(len, 0);
    }
    io.read_exact(&mut buf[..len]).await?;
    let out = decode(&buf[..len]);
    if buf.len() <= MAX_SPARE {
        SPARE.with(|s| s.set(buf));
    }
    Ok(out)
}

async fn write_frame<T: AsyncWrite + Unpin>(io: &mut T, bytes: &[u8]) -> io::Result<()> {
    io.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
    io.write_all(bytes).await?;
    io.close().await
}

fn invalid(e: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

#[async_trait::async_trait]
impl libp2p::request_response::Codec for SyncCodec {
    type Protocol = StreamProtocol;
    type Request = Envelope<Request>;
    type Response = Envelope<Response>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Self::Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, MAX_REQUEST, |b| wire::decode(b, MAX_REQUEST))
            .await?
            .map_err(invalid)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Self::Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, MAX_RESPONSE, |b| wire::decode(b, MAX_RESPONSE))
            .await?
            .map_err(invalid)
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, req: Self::Request) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &wire::encode(&req)).await
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, io: &mut T, res: Self::Response) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &wire::encode(&res)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;
    use libp2p::request_response::Codec;

    fn proto() -> StreamProtocol {
        StreamProtocol::new(super::super::SYNC_PROTOCOL)
    }

    #[test]
    fn oversized_and_garbage_frames_are_refused() {
        futures::executor::block_on(async {
            // A length prefix past the cap is refused before anything is allocated.
            let mut big = Cursor::new((MAX_REQUEST as u32 + 1).to_be_bytes().to_vec());
            let e = SyncCodec.read_request(&proto(), &mut big).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            // A well-sized frame of garbage does not decode.
            let mut frame = 16u32.to_be_bytes().to_vec();
            frame.extend_from_slice(&[0xee; 16]);
            assert!(SyncCodec.read_request(&proto(), &mut Cursor::new(frame)).await.is_err());
            // A truncated frame is an error, not a hang or a partial message.
            let mut short = 100u32.to_be_bytes().to_vec();
            short.extend_from_slice(&[0; 10]);
            assert!(SyncCodec
                .read_response(&proto(), &mut Cursor::new(short))
                .await
                .is_err());
            // And a real request round-trips.
            let mut out = Cursor::new(Vec::new());
            let req = Envelope {
                version: 1,
                body: Request::Records {
                    author: crate::model::NodeId([3; 32]),
                    from: 1,
                    to: 9,
                },
            };
            SyncCodec.write_request(&proto(), &mut out, req).await.unwrap();
            let back = SyncCodec
                .read_request(&proto(), &mut Cursor::new(out.into_inner()))
                .await
                .unwrap();
            assert!(matches!(back.body, Request::Records { from: 1, to: 9, .. }));
        });
    }
}
