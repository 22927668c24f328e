//! Benchmark family `pipeline` (to be written).
use super::{Context, Section};

pub fn run(_ctx: &Context) -> anyhow::Result<Vec<Section>> {
    Ok(Vec::new())
}
