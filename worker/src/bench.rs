//! `worker mfs bench`: the client's write path fed from memory, the same way
//! the libmfsio benchmark peer writes (a generated buffer reused cyclically),
//! so a comparison measures the MooseFS clients and not local file reads.
//! Prints one JSON line.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};
use moosefs::{MfsClient, MfsError, MfsPath, Name, WriteOptions};
use tokio::io::AsyncRead;

pub struct BenchSpec {
    pub small: bool,
    pub dest: String,
    pub size: u64,
    pub count: usize,
    pub jobs: usize,
    pub md5: bool,
    pub verify: bool,
}

/// `len` bytes cycling through a shared pseudo-random pattern.
struct Pattern {
    data: Arc<Vec<u8>>,
    pos: usize,
    left: u64,
}

impl AsyncRead for Pattern {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let n = (buf.remaining() as u64).min(self.left) as usize;
        let n = n.min(self.data.len() - self.pos);
        let pos = self.pos;
        buf.put_slice(&self.data[pos..pos + n]);
        self.pos = (pos + n) % self.data.len();
        self.left -= n as u64;
        std::task::Poll::Ready(Ok(()))
    }
}

fn pattern() -> Arc<Vec<u8>> {
    // xorshift64*, 8 MiB + 4 KiB so block boundaries do not repeat.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut v = Vec::with_capacity((8 << 20) + 4096);
    while v.len() < v.capacity() {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    Arc::new(v)
}

pub async fn run(client: &MfsClient, spec: BenchSpec) -> Result<()> {
    let dest = MfsPath::parse(&spec.dest)?;
    if client.resolve(&dest).await.is_ok() {
        bail!("{dest} exists");
    }
    let opts = Arc::new(WriteOptions {
        compute_md5: spec.md5,
        verify: spec.verify,
        required_copies: Some(3),
        ..client.config().write.clone()
    });
    let data = pattern();
    let started = Instant::now();
    let (files, bytes) = if spec.small {
        let dir = client.mkdir_all(&dest).await?;
        let slots = Arc::new(tokio::sync::Semaphore::new(spec.jobs.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        let mut bytes = 0;
        for i in 0..spec.count {
            let permit = slots.clone().acquire_owned().await?;
            let (client, opts, data) = (client.clone(), opts.clone(), data.clone());
            let size = spec.size;
            tasks.spawn(async move {
                let name = Name::parse(&format!("f{i:06}"))?;
                let file = client.create(dir, &name, 0o644).await?;
                let reader = Pattern {
                    pos: (i * 4093) % data.len(),
                    data,
                    left: size,
                };
                let out = client.write_new_file(&file, reader, &opts).await?;
                drop(permit);
                Ok::<u64, MfsError>(out.length)
            });
            while let Some(r) = tasks.try_join_next() {
                bytes += r??;
            }
        }
        while let Some(r) = tasks.join_next().await {
            bytes += r??;
        }
        (spec.count, bytes)
    } else {
        let (parent, name) = dest
            .split_last()
            .ok_or_else(|| anyhow::anyhow!("dest is the root"))?;
        let (parent, _) = client.resolve(&parent).await?;
        let file = client.create(parent, name, 0o644).await?;
        let reader = Pattern {
            data,
            pos: 0,
            left: spec.size,
        };
        let out = client.write_new_file(&file, reader, &opts).await?;
        (1, out.length)
    };
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{{\"mode\":\"{}\",\"files\":{files},\"bytes\":{bytes},\"seconds\":{seconds:.6}}}",
        if spec.small { "small" } else { "big" }
    );
    Ok(())
}
