//! Reading GPU buffers back. Natively we wait on the device with a timeout; on
//! the web the browser resolves `mapAsync` from its event loop, so we await a
//! channel and never spin.

use std::sync::{Arc, OnceLock};

use super::Gpu;
use crate::error::{Error, Result};

pub(crate) async fn read_buffer(gpu: &Gpu, source: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
    let staging = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("readback"),
        size: bytes,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("readback") });
    encoder.copy_buffer_to_buffer(source, 0, &staging, 0, bytes);
    gpu.queue.submit([encoder.finish()]);

    let (sender, receiver) = futures_channel::oneshot::channel();
    staging.slice(..).map_async(wgpu::MapMode::Read, move |result| {
        let _ = sender.send(result);
    });
    wait(gpu, "readback")?;
    let mapped = receiver
        .await
        .map_err(|_| Error::Gpu { context: "readback".into(), message: "the map callback never ran".into() })?;
    gpu.check("readback")?;
    mapped.map_err(|e| Error::Gpu { context: "readback".into(), message: e.to_string() })?;
    let data = staging
        .slice(..)
        .get_mapped_range()
        .map_err(|e| Error::Gpu { context: "readback".into(), message: e.to_string() })?
        .to_vec();
    staging.unmap();
    Ok(data)
}

/// A tensor's bytes copied out at the end of a submission
/// ([`Recorder::read_after`](super::Recorder::read_after)).
pub struct PendingRead {
    staging: wgpu::Buffer,
    bytes: u64,
    submitted: Arc<OnceLock<wgpu::SubmissionIndex>>,
}

impl PendingRead {
    pub(crate) fn new(staging: wgpu::Buffer, bytes: u64, submitted: Arc<OnceLock<wgpu::SubmissionIndex>>) -> Self {
        PendingRead { staging, bytes, submitted }
    }

    /// The bytes, once the submission that copied them is done: natively
    /// waiting for that submission only (not for any submitted after it),
    /// on the web awaiting `mapAsync`, which resolves as that one finishes.
    /// Reading before the recorder was submitted is an error.
    pub async fn read(self, gpu: &Gpu) -> Result<Vec<u8>> {
        const CONTEXT: &str = "read after submit";
        let Some(index) = self.submitted.get().cloned() else {
            return Err(Error::invalid(CONTEXT, "the recorder holding this read was never submitted"));
        };
        let (sender, receiver) = futures_channel::oneshot::channel();
        self.staging.slice(..).map_async(wgpu::MapMode::Read, move |result| {
            let _ = sender.send(result);
        });
        wait_for(gpu, CONTEXT, Some(index))?;
        let mapped = receiver
            .await
            .map_err(|_| Error::Gpu { context: CONTEXT.into(), message: "the map callback never ran".into() })?;
        gpu.check(CONTEXT)?;
        mapped.map_err(|e| Error::Gpu { context: CONTEXT.into(), message: e.to_string() })?;
        let data = self
            .staging
            .slice(..)
            .get_mapped_range()
            .map_err(|e| Error::Gpu { context: CONTEXT.into(), message: e.to_string() })?[..self.bytes as usize]
            .to_vec();
        self.staging.unmap();
        Ok(data)
    }
}

/// Natively, block until the GPU is idle or the timeout passes. On the web this
/// does nothing: the browser drives completion and the caller awaits.
pub(crate) fn wait(gpu: &Gpu, context: &str) -> Result<()> {
    wait_for(gpu, context, None)
}

/// [`wait`] for one submission (`None`: all of them).
fn wait_for(gpu: &Gpu, context: &str, submission_index: Option<wgpu::SubmissionIndex>) -> Result<()> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        let timeout = std::time::Duration::from_secs(gpu.timeout_seconds);
        gpu.device.poll(wgpu::PollType::Wait { submission_index, timeout: Some(timeout) }).map_err(|e| match e {
            wgpu::PollError::Timeout => Error::Timeout { context: context.into(), seconds: gpu.timeout_seconds },
            other => Error::Gpu { context: context.into(), message: other.to_string() },
        })?;
    }
    #[cfg(target_arch = "wasm32")]
    let _ = (gpu, context, submission_index);
    Ok(())
}

impl Gpu {
    /// Wait for all submitted work (natively; a no-op on the web, where the
    /// next readback awaits it). Returns any error the device reported.
    pub async fn synchronize(&self) -> Result<()> {
        wait(self, "synchronize")?;
        #[cfg(target_arch = "wasm32")]
        {
            let (sender, receiver) = futures_channel::oneshot::channel();
            self.queue.on_submitted_work_done(move || {
                let _ = sender.send(());
            });
            let _ = receiver.await;
        }
        self.check("synchronize")
    }
}
