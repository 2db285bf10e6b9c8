//! Reading GPU buffers back. Natively we wait on the device with a timeout; on
//! the web the browser resolves `mapAsync` from its event loop, so we await a
//! channel and never spin.

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

/// Natively, block until the GPU is idle or the timeout passes. On the web this
/// does nothing: the browser drives completion and the caller awaits.
pub(crate) fn wait(gpu: &Gpu, context: &str) -> Result<()> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        let timeout = std::time::Duration::from_secs(gpu.timeout_seconds);
        gpu.device.poll(wgpu::PollType::Wait { submission_index: None, timeout: Some(timeout) }).map_err(
            |e| match e {
                wgpu::PollError::Timeout => Error::Timeout { context: context.into(), seconds: gpu.timeout_seconds },
                other => Error::Gpu { context: context.into(), message: other.to_string() },
            },
        )?;
    }
    let _ = (gpu, context);
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
