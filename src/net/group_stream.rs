//! The membership gate under Noise: the start of every TCP connection is encrypted
//! with a key only group members can derive, as libp2p's pnet does, but with
//! ChaCha20 (SIMD) instead of pnet's scalar XSalsa20, and only for the first
//! `SHIELD_BYTES` of each direction.
//!
//! Why not pnet itself: its XSalsa20 was 30% of both nodes' CPU while a 1 GiB file
//! synced (perf over the transfer; Noise's ChaCha20-Poly1305 was 5% per side).
//!
//! The construction is pnet's: each side sends a random 24-byte nonce, then writes
//! its bytes XORed with a keystream keyed by the group secret and its own nonce.
//! A peer without the secret reads garbage, so protocol negotiation and the Noise
//! handshake inside fail: it learns nothing, not even the member's identity, and it
//! gets no protocol at all. Authenticity and confidentiality of the traffic are
//! Noise's job, as they are under pnet.
//!
//! Why only the first MiB: that covers protocol negotiation and the Noise handshake
//! (three messages of at most 64 KiB each) with room to spare. After it, every byte
//! is Noise ciphertext under session keys that only the two ends of that handshake
//! hold, so XORing it again kept nobody out. It did cost 14% of both nodes' CPU
//! while a 1 GiB file synced (perf, 2026-12-01), the largest item after Noise itself.

use chacha20::cipher::{KeyIvInit, StreamCipher};
use chacha20::ChaCha20;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use rand::RngCore;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

const NONCE_LEN: usize = 24;
/// Bytes at the start of each direction that go through the keystream.
const SHIELD_BYTES: u64 = 1 << 20;
/// Ciphertext buffered per write call.
const WRITE_BUFFER: usize = 64 * 1024;

/// The group's stream key, derived from the group secret (never the secret itself).
#[derive(Clone, Copy)]
pub struct GroupStreamKey([u8; 32]);

impl GroupStreamKey {
    pub fn from_secret(secret: &[u8]) -> Self {
        GroupStreamKey(blake3::derive_key("distribox group stream key v3", secret))
    }

    /// Exchanges nonces over a fresh connection and wraps it.
    pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(self, mut socket: S) -> io::Result<GroupStream<S>> {
        let mut local = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut local);
        socket.write_all(&local).await?;
        socket.flush().await?;
        let mut remote = [0u8; NONCE_LEN];
        socket.read_exact(&mut remote).await?;
        Ok(GroupStream {
            inner: socket,
            read: Keystream::new(self, remote),
            write: Keystream::new(self, local),
            out: Vec::with_capacity(WRITE_BUFFER),
            out_pos: 0,
        })
    }
}

/// One direction's keystream: ChaCha20 under a key derived from the group key and
/// the sender's nonce, over the first `SHIELD_BYTES` of the direction.
struct Keystream {
    /// Bytes still to encrypt.
    left: u64,
    cipher: ChaCha20,
}

impl Keystream {
    fn new(key: GroupStreamKey, nonce: [u8; NONCE_LEN]) -> Self {
        let k = blake3::keyed_hash(&key.0, &nonce);
        Keystream {
            left: SHIELD_BYTES,
            // The key is unique per nonce, so a zero IV never repeats.
            cipher: ChaCha20::new(k.as_bytes().into(), &[0u8; 12].into()),
        }
    }

    fn apply(&mut self, buf: &mut [u8]) {
        let n = (buf.len() as u64).min(self.left) as usize;
        if n > 0 {
            self.cipher.apply_keystream(&mut buf[..n]);
            self.left -= n as u64;
        }
    }
}

/// A connection after `GroupStreamKey::handshake`.
pub struct GroupStream<S> {
    inner: S,
    read: Keystream,
    write: Keystream,
    /// Ciphertext accepted from the caller but not yet written to `inner`.
    out: Vec<u8>,
    out_pos: usize,
}

impl<S: AsyncWrite + Unpin> GroupStream<S> {
    /// Writes buffered ciphertext until none is left.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.out.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out[self.out_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        self.out.clear();
        self.out_pos = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for GroupStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        this.read.apply(&mut buf[..n]);
        Poll::Ready(Ok(n))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for GroupStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        if this.write.left == 0 {
            // Past the shield: no copy.
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        let n = buf.len().min(WRITE_BUFFER).min(this.write.left as usize);
        this.out.extend_from_slice(&buf[..n]);
        this.write.apply(&mut this.out);
        // Start sending now; what does not fit yet goes out on the next call (the
        // inner stream has registered our waker if it returned Pending).
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An in-memory connection: reads from `input`, writes into `output`.
    struct Mem {
        input: futures::io::Cursor<Vec<u8>>,
        output: futures::io::Cursor<Vec<u8>>,
    }

    impl AsyncRead for Mem {
        fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.input).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Mem {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.output).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.output).poll_flush(cx)
        }
        fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.output).poll_close(cx)
        }
    }

    fn mem(input: Vec<u8>) -> Mem {
        Mem {
            input: futures::io::Cursor::new(input),
            output: futures::io::Cursor::new(Vec::new()),
        }
    }

    /// What one side sends arrives intact at a member and is ciphertext on the
    /// wire; under another key it is garbage (what makes a non-member's Noise
    /// handshake fail).
    #[test]
    fn members_read_each_other_and_others_read_garbage() {
        futures::executor::block_on(async {
            let key = GroupStreamKey::from_secret(b"group secret");
            let other = GroupStreamKey::from_secret(b"another secret");
            // Past the shield, in pieces that straddle its end.
            let msg: Vec<u8> = (0..SHIELD_BYTES as u32 + 300_000).map(|i| (i * 7) as u8).collect();
            let mut a = key.handshake(mem(vec![0; NONCE_LEN])).await.unwrap();
            for piece in msg.chunks(100_000) {
                a.write_all(piece).await.unwrap();
            }
            a.flush().await.unwrap();
            let wire = a.inner.output.into_inner();
            assert_eq!(wire.len(), NONCE_LEN + msg.len());
            let shield = SHIELD_BYTES as usize;
            assert!(
                wire[NONCE_LEN..NONCE_LEN + shield] != msg[..shield],
                "the wire carries ciphertext"
            );
            assert_eq!(
                wire[NONCE_LEN + shield..],
                msg[shield..],
                "then Noise's bytes as they are"
            );
            for (k, same) in [(key, true), (other, false)] {
                let mut b = k.handshake(mem(wire.clone())).await.unwrap();
                let mut got = vec![0u8; msg.len()];
                b.read_exact(&mut got).await.unwrap();
                assert_eq!(got == msg, same);
            }
        });
    }

    /// The keystream covers the first SHIELD_BYTES of a direction at the same byte
    /// on both sides, whatever the sizes of the pieces, and nothing after.
    #[test]
    fn keystream_covers_exactly_the_shield() {
        let key = GroupStreamKey::from_secret(b"s");
        let nonce = [9u8; NONCE_LEN];
        let len = SHIELD_BYTES as usize + 5000;
        let data: Vec<u8> = (0..len as u32).map(|i| (i % 251) as u8).collect();
        let mut whole = data.clone();
        Keystream::new(key, nonce).apply(&mut whole);
        let mut pieces = data.clone();
        let mut b = Keystream::new(key, nonce);
        for c in pieces.chunks_mut(7777) {
            b.apply(c);
        }
        assert_eq!(whole, pieces);
        let shield = SHIELD_BYTES as usize;
        let same = whole[..shield]
            .iter()
            .zip(&data[..shield])
            .filter(|(a, b)| a == b)
            .count();
        assert!(
            same < shield / 100,
            "inside the shield, bytes are encrypted ({same} unchanged)"
        );
        assert_eq!(
            whole[shield..],
            data[shield..],
            "past the shield, bytes pass as they are"
        );
    }
}
