//! Maps the key conventions of adapter files onto the bundle's module names
//! (`down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`).
//!
//! Kohya files flatten module paths with `_`, either from diffusers names or from the original
//! LDM checkpoint names (`input_blocks.N.1`, `middle_block.1`, `output_blocks.N.1`). Flattening
//! loses the dots, so names are looked up in a table built from the bundle's own modules.

use crate::bundle::LoraModule;
use std::collections::HashMap;

/// Lookup from kohya flat names (both conventions) to bundle module names.
pub(crate) struct KohyaNames {
    map: HashMap<String, String>,
}

impl KohyaNames {
    /// `layers_per_block` comes from the UNet config: each down block contributes
    /// `layers_per_block` attention layers plus a downsampler to LDM's `input_blocks` (after
    /// `conv_in` at index 0); each up block contributes `layers_per_block + 1` to `output_blocks`.
    pub(crate) fn new(modules: &[LoraModule], layers_per_block: usize) -> Self {
        let mut map = HashMap::new();
        for m in modules {
            map.insert(flat(&m.name), m.name.clone());
            if let Some(ldm) = ldm_name(&m.name, layers_per_block) {
                map.insert(flat(&ldm), m.name.clone());
            }
        }
        KohyaNames { map }
    }

    pub(crate) fn resolve(&self, flat_name: &str) -> Option<&str> {
        self.map.get(flat_name).map(String::as_str)
    }
}

fn flat(name: &str) -> String {
    name.replace('.', "_")
}

/// diffusers attention path → LDM path, or None for modules outside transformer blocks.
fn ldm_name(name: &str, layers_per_block: usize) -> Option<String> {
    let parts: Vec<&str> = name.split('.').collect();
    let per = layers_per_block + 1;
    let (prefix, rest) = match parts.as_slice() {
        ["down_blocks", i, "attentions", j, rest @ ..] => {
            let (i, j): (usize, usize) = (i.parse().ok()?, j.parse().ok()?);
            (format!("input_blocks.{}.1", 1 + i * per + j), rest)
        }
        ["mid_block", "attentions", "0", rest @ ..] => ("middle_block.1".to_string(), rest),
        ["up_blocks", i, "attentions", j, rest @ ..] => {
            let (i, j): (usize, usize) = (i.parse().ok()?, j.parse().ok()?);
            (format!("output_blocks.{}.1", i * per + j), rest)
        }
        _ => return None,
    };
    Some(format!("{prefix}.{}", rest.join(".")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sd15_layout() {
        // SD-1.5: layers_per_block 2 → down_blocks.1.attentions.1 is input_blocks.5, up_blocks.3.attentions.2 is output_blocks.11.
        assert_eq!(
            ldm_name(
                "down_blocks.1.attentions.1.transformer_blocks.0.attn2.to_k",
                2
            )
            .unwrap(),
            "input_blocks.5.1.transformer_blocks.0.attn2.to_k"
        );
        assert_eq!(
            ldm_name(
                "up_blocks.3.attentions.2.transformer_blocks.0.attn1.to_out.0",
                2
            )
            .unwrap(),
            "output_blocks.11.1.transformer_blocks.0.attn1.to_out.0"
        );
        assert_eq!(
            ldm_name("mid_block.attentions.0.transformer_blocks.0.attn1.to_q", 2).unwrap(),
            "middle_block.1.transformer_blocks.0.attn1.to_q"
        );
    }
}
