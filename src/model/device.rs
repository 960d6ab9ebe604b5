//! Where a model lives and in which precision: `cpu`, `cuda`, `cuda:N` or `auto`; `fp32`, `bf16`
//! or `fp16`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind};

/// A device as written in a config or on the command line; resolved to a `tch::Device` only
/// when a model is placed, so that a config written on a GPU machine still validates on CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    /// The first GPU when one is visible, otherwise the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl DeviceSpec {
    /// Under data parallelism each rank has its own GPUs: `cuda:i` counts from the rank's
    /// `LOCAL_RANK` (one rank per GPU: `cuda` is GPU `LOCAL_RANK`).
    pub fn resolve(self) -> Result<Device, DeviceError> {
        match self {
            DeviceSpec::Auto if tch::Cuda::is_available() => DeviceSpec::Cuda(0).resolve(),
            DeviceSpec::Auto | DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(index) => {
                let index = index + crate::distributed::world().local_rank();
                let visible = tch::Cuda::device_count() as usize;
                if index < visible {
                    Ok(Device::Cuda(index))
                } else {
                    Err(DeviceError::CudaUnavailable { index, visible })
                }
            }
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = DeviceError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|index| index.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| DeviceError::Unknown(other.to_string())),
        }
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = DeviceError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<DeviceSpec> for String {
    fn from(spec: DeviceSpec) -> String {
        spec.to_string()
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => write!(f, "auto"),
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(index) => write!(f, "cuda:{index}"),
        }
    }
}

/// Floating point precision of a model's weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    Bf16,
    /// Half precision: meant for CUDA (it runs on the CPU, slowly); trained with dynamic loss
    /// scaling, since its small exponent range flushes small gradients to zero.
    Fp16,
}

impl Precision {
    pub fn kind(self) -> Kind {
        match self {
            Precision::Fp32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
            Precision::Fp16 => Kind::Half,
        }
    }

    /// Casts every variable of `vs` (floating point ones) to this precision.
    pub fn cast(self, vs: &mut tch::nn::VarStore) {
        match self {
            Precision::Fp32 => {}
            Precision::Bf16 => vs.bfloat16(),
            Precision::Fp16 => vs.half(),
        }
    }
}

impl FromStr for Precision {
    type Err = DeviceError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "fp32" => Ok(Precision::Fp32),
            "bf16" => Ok(Precision::Bf16),
            "fp16" => Ok(Precision::Fp16),
            other => Err(DeviceError::UnknownPrecision(other.to_string())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device `{0}`: expected `cpu`, `cuda`, `cuda:N` or `auto`")]
    Unknown(String),
    #[error("device `cuda:{index}` requested but {visible} CUDA device(s) are visible")]
    CudaUnavailable { index: usize, visible: usize },
    #[error("unknown dtype `{0}`: expected `fp32`, `bf16` or `fp16`")]
    UnknownPrecision(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_documented_device() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("auto".parse::<DeviceSpec>().unwrap(), DeviceSpec::Auto);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        let error = "gpu".parse::<DeviceSpec>().unwrap_err().to_string();
        assert!(error.contains("`gpu`") && error.contains("cuda:N"), "{error}");
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
    }

    #[test]
    fn missing_cuda_device_is_an_error_not_a_silent_cpu_fallback() {
        let visible = tch::Cuda::device_count() as usize;
        let error = DeviceSpec::Cuda(visible).resolve().unwrap_err();
        assert!(error.to_string().contains(&format!("cuda:{visible}")));
    }
}
