//! `envd context`: named builders (Docker's embedded BuildKit, or a buildkitd on unix/tcp) and
//! runners (the local Docker engine, or a Kubernetes cluster), one context current, kept in
//! `contexts.toml` in envd's config directory. `envd build` and `envd up` use the current
//! context unless `--builder` says otherwise; `envd up`, `ls`, `describe`, `logs`, `exec` and
//! `down` act on its runner.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

use crate::buildkit::connect::Builder;

/// The context that always exists: Docker's embedded BuildKit on the local engine.
pub const DEFAULT: &str = "default";

/// One named builder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuilderContext {
    /// Its name.
    pub name: String,
    /// `moby-worker`, `unix` or `tcp`.
    pub builder: String,
    /// The socket or address (`unix:///...`, `tcp://host:port`); empty for the Docker socket.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub builder_address: String,
    /// `HOST[:PORT]` of the registry a unix/tcp builder's images reach the local engine through
    /// (see `build::Options::registry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    /// Where environments run when not on the local Docker engine: a Kubernetes cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<crate::env::kube::KubeTarget>,
}

impl BuilderContext {
    /// The builder this context names.
    pub fn to_builder(&self) -> anyhow::Result<Builder> {
        Builder::parse(
            &self.builder,
            (!self.builder_address.is_empty()).then_some(self.builder_address.as_str()),
        )
        .with_context(|| format!("context {:?}", self.name))
    }
}

/// Every context and which one is current.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contexts {
    /// The current context's name.
    pub current: String,
    /// The contexts, `default` first.
    #[serde(rename = "context")]
    pub contexts: Vec<BuilderContext>,
}

impl Default for Contexts {
    fn default() -> Self {
        Contexts {
            current: DEFAULT.into(),
            contexts: vec![BuilderContext {
                name: DEFAULT.into(),
                builder: "moby-worker".into(),
                builder_address: String::new(),
                registry: None,
                kubernetes: None,
            }],
        }
    }
}

/// Where the contexts are kept.
pub fn path() -> PathBuf {
    crate::host::config_dir().join("contexts.toml")
}

impl Contexts {
    /// Reads the file (the default context alone when there is none).
    pub fn load() -> anyhow::Result<Contexts> {
        let p = path();
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Contexts::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", p.display())),
        };
        let c: Contexts =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        if c.get(&c.current).is_none() {
            bail!(
                "{}: the current context {:?} is not defined",
                p.display(),
                c.current
            );
        }
        Ok(c)
    }

    /// Writes the file.
    pub fn save(&self) -> anyhow::Result<()> {
        let p = path();
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let tmp = p.with_extension("toml.tmp");
        std::fs::write(&tmp, toml::to_string(self)?)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &p).with_context(|| format!("cannot write {}", p.display()))
    }

    /// A context by name.
    pub fn get(&self, name: &str) -> Option<&BuilderContext> {
        self.contexts.iter().find(|c| c.name == name)
    }

    /// The current context.
    pub fn current(&self) -> &BuilderContext {
        self.get(&self.current)
            .expect("load() checks the current context exists")
    }

    fn unknown(&self, name: &str) -> anyhow::Error {
        let names: Vec<&str> = self.contexts.iter().map(|c| c.name.as_str()).collect();
        match envd_supervisor::suggest::closest(name, &names) {
            Some(c) => anyhow::anyhow!("there is no context named {name:?}; did you mean {c:?}?"),
            None => anyhow::anyhow!(
                "there is no context named {name:?}; contexts: {}",
                names.join(", ")
            ),
        }
    }

    /// Adds a context (checking its builder), optionally making it current.
    pub fn create(&mut self, ctx: BuilderContext, make_current: bool) -> anyhow::Result<()> {
        if ctx.name.is_empty() || ctx.name.contains(char::is_whitespace) {
            bail!("a context name must be one word, got {:?}", ctx.name);
        }
        if self.get(&ctx.name).is_some() {
            bail!("a context named {:?} exists; remove it first", ctx.name);
        }
        ctx.to_builder()?;
        if let Some(k) = &ctx.kubernetes {
            if k.registry.is_empty() || k.registry.contains('/') {
                bail!(
                    "context {:?}: --registry must be HOST[:PORT] of a registry the cluster's nodes pull from, got {:?}",
                    ctx.name,
                    k.registry
                );
            }
        }
        if make_current {
            self.current = ctx.name.clone();
        }
        self.contexts.push(ctx);
        Ok(())
    }

    /// Makes a context current.
    pub fn use_context(&mut self, name: &str) -> anyhow::Result<()> {
        if self.get(name).is_none() {
            return Err(self.unknown(name));
        }
        self.current = name.to_string();
        Ok(())
    }

    /// Removes a context; neither `default` nor the current one.
    pub fn remove(&mut self, name: &str) -> anyhow::Result<()> {
        if self.get(name).is_none() {
            return Err(self.unknown(name));
        }
        if name == DEFAULT {
            bail!("the default context cannot be removed");
        }
        if name == self.current {
            bail!("{name:?} is the current context; `envd context use --name default` first");
        }
        self.contexts.retain(|c| c.name != name);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(name: &str) -> BuilderContext {
        BuilderContext {
            name: name.into(),
            builder: "tcp".into(),
            builder_address: "tcp://127.0.0.1:1234".into(),
            registry: None,
            kubernetes: None,
        }
    }

    #[test]
    fn create_use_remove_and_round_trip() {
        let mut c = Contexts::default();
        c.create(tcp("remote"), true).unwrap();
        assert_eq!(c.current().name, "remote");
        assert!(
            matches!(c.current().to_builder().unwrap(), Builder::Tcp(a) if a == "127.0.0.1:1234")
        );
        let text = toml::to_string(&c).unwrap();
        let back: Contexts = toml::from_str(&text).unwrap();
        assert_eq!(back, c);
        assert!(c.create(tcp("remote"), false).is_err());
        assert!(c
            .remove("remote")
            .unwrap_err()
            .to_string()
            .contains("current"));
        assert!(c.remove(DEFAULT).is_err());
        let e = c.use_context("remot").unwrap_err().to_string();
        assert!(e.contains("did you mean \"remote\""), "{e}");
        c.use_context(DEFAULT).unwrap();
        c.remove("remote").unwrap();
        assert_eq!(c, Contexts::default());
        let bad = BuilderContext {
            name: "x".into(),
            builder: "tcp".into(),
            builder_address: String::new(),
            registry: None,
            kubernetes: None,
        };
        assert!(c.create(bad, false).is_err());
    }
}
