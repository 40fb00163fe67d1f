//! `load("lib.envd", "name")`: another build file of the project, as envd loads one. The path is
//! relative to the build context (envd resolves it from the directory it runs in, the project's);
//! each file is evaluated once per build, its top-level calls recorded like the loading file's,
//! and a file that loads itself through others is refused with the chain.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use starlark::environment::{FrozenModule, Module};
use starlark::eval::{Evaluator, FileLoader};
use starlark::syntax::{AstModule, Dialect};

use super::Recorder;

/// The files loaded so far in one evaluation, and the chain being loaded.
#[derive(Default)]
pub struct Loads {
    done: RefCell<HashMap<PathBuf, FrozenModule>>,
    chain: RefCell<Vec<PathBuf>>,
}

/// The evaluator's [`FileLoader`]: reads, evaluates and freezes a loaded file.
pub struct Loader<'a> {
    rec: &'a Recorder,
}

impl<'a> Loader<'a> {
    /// A loader recording into `rec`.
    pub fn new(rec: &'a Recorder) -> Self {
        Loader { rec }
    }

    fn evaluate(&self, path: &Path) -> anyhow::Result<FrozenModule> {
        let source = super::read_source(path).map_err(|e| anyhow::anyhow!("{e}"))?;
        let shown = path.display().to_string();
        let ast = AstModule::parse(&shown, source, &Dialect::Standard)
            .map_err(|e| anyhow::anyhow!("{}", super::from_starlark(e)))?;
        Module::with_temp_heap(|module| {
            {
                let mut eval = Evaluator::new(&module);
                eval.extra = Some(self.rec);
                eval.set_loader(self);
                eval.eval_module(ast, &self.rec.globals)
                    .map_err(|e| anyhow::anyhow!("{}", super::from_starlark(e)))?;
            }
            module
                .freeze()
                .map_err(|e| anyhow::anyhow!("{shown}: {e:?}"))
        })
    }
}

impl FileLoader for Loader<'_> {
    fn load(&self, path: &str) -> starlark::Result<FrozenModule> {
        let file = self.rec.context_dir.join(path);
        let key = file.canonicalize().map_err(|e| {
            starlark::Error::new_other(anyhow::anyhow!(
                "load({path:?}): cannot read {}: {e} (paths are relative to the build context)",
                file.display()
            ))
        })?;
        let loads = &self.rec.loads;
        if let Some(done) = loads.done.borrow().get(&key) {
            return Ok(done.clone());
        }
        if loads.chain.borrow().contains(&key) {
            let chain: Vec<String> = loads
                .chain
                .borrow()
                .iter()
                .chain([&key])
                .map(|p| p.display().to_string())
                .collect();
            return Err(starlark::Error::new_other(anyhow::anyhow!(
                "load({path:?}) forms a cycle: {}",
                chain.join(" -> ")
            )));
        }
        loads.chain.borrow_mut().push(key.clone());
        let result = self.evaluate(&file);
        loads.chain.borrow_mut().pop();
        let module = result.map_err(starlark::Error::new_other)?;
        loads.done.borrow_mut().insert(key, module.clone());
        Ok(module)
    }
}
