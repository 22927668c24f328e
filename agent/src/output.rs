//! Where the agent's events go. `--stdout` writes one JSON object per line; the collector
//! shipping path is a second sink.
use std::io::Write;

use custos_proto::Event;

pub trait Sink: Send {
    fn write(&mut self, event: &Event) -> anyhow::Result<()>;
    /// Called when no more events are waiting.
    fn flush(&mut self) -> anyhow::Result<()>;
}

/// JSON lines on standard output.
pub struct JsonLines<W: Write + Send> {
    out: std::io::BufWriter<W>,
}

impl<W: Write + Send> JsonLines<W> {
    pub fn new(out: W) -> Self {
        Self {
            out: std::io::BufWriter::new(out),
        }
    }
}

impl<W: Write + Send> Sink for JsonLines<W> {
    fn write(&mut self, event: &Event) -> anyhow::Result<()> {
        serde_json::to_writer(&mut self.out, event)?;
        self.out.write_all(b"\n")?;
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.out.flush()?;
        Ok(())
    }
}
