//! Several file actions in one FileOp: one step and one layer where an op per file would make a
//! layer each (an image of many small layers costs the engine a registration per layer on every
//! load or pull).

use super::{chown, platform, DirSpec, Llb, State};
use crate::buildkit::proto::pb;

/// What an action builds on: an input of the op, an earlier action's result, or nothing.
#[derive(Clone, Copy)]
enum Base {
    Scratch,
    Input(usize),
    Action(usize),
}

/// File actions applied in order on one state; [`Files::finish`] adds them as one op.
pub struct Files<'a> {
    llb: &'a mut Llb,
    inputs: Vec<pb::Input>,
    actions: Vec<(Base, Option<usize>, pb::file_action::Action)>,
}

impl Llb {
    /// Starts a batch of file actions on `root`.
    pub fn files(&mut self, root: &State) -> Files<'_> {
        let inputs = if root.is_scratch() {
            Vec::new()
        } else {
            vec![root.input()]
        };
        Files {
            llb: self,
            inputs,
            actions: Vec::new(),
        }
    }
}

impl Files<'_> {
    /// What the next action builds on: the last action's result, else the root.
    fn base(&self) -> Base {
        match (self.actions.len(), self.inputs.is_empty()) {
            (0, true) => Base::Scratch,
            (0, false) => Base::Input(0),
            (n, _) => Base::Action(n - 1),
        }
    }

    fn push(&mut self, from: Option<usize>, action: pb::file_action::Action) -> &mut Self {
        let base = self.base();
        self.actions.push((base, from, action));
        self
    }

    /// The op input index of `state`, added once however many actions read it.
    fn input_of(&mut self, state: &State) -> usize {
        let input = state.input();
        match self.inputs.iter().position(|i| *i == input) {
            Some(i) => i,
            None => {
                self.inputs.push(input);
                self.inputs.len() - 1
            }
        }
    }

    /// Creates a directory with its mode and owner (its parent must exist unless `parents`).
    pub fn mkdir(&mut self, (path, mode, owner): DirSpec, parents: bool) -> &mut Self {
        self.push(
            None,
            pb::file_action::Action::Mkdir(pb::FileActionMkDir {
                path: path.into(),
                mode,
                make_parents: parents,
                owner: chown(owner),
                timestamp: -1,
            }),
        )
    }

    /// Writes a file, creating its parent directories (0755, owned by `owner`).
    pub fn mkfile(
        &mut self,
        path: &str,
        data: &[u8],
        mode: i32,
        owner: Option<(u32, u32)>,
    ) -> &mut Self {
        let parent = std::path::Path::new(path)
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| "/".into());
        self.mkdir((&parent, 0o755, owner), true);
        self.push(
            None,
            pb::file_action::Action::Mkfile(pb::FileActionMkFile {
                path: path.into(),
                mode,
                data: data.to_vec(),
                owner: chown(owner),
                timestamp: -1,
            }),
        )
    }

    /// Copies `src` from `from` to `dest`, with `mode` and `owner` when given.
    pub fn copy(
        &mut self,
        from: &State,
        src: &str,
        dest: &str,
        mode: Option<i32>,
        owner: Option<(u32, u32)>,
    ) -> &mut Self {
        let from = self.input_of(from);
        self.push(
            Some(from),
            pb::file_action::Action::Copy(pb::FileActionCopy {
                src: src.into(),
                dest: dest.into(),
                owner: chown(owner),
                mode: mode.unwrap_or(-1),
                follow_symlink: true,
                dir_copy_contents: false,
                create_dest_path: true,
                allow_wildcard: false,
                timestamp: -1,
            }),
        )
    }

    /// Adds the actions as one op named `name`; its output is the last action's result.
    pub fn finish(self, name: &str) -> State {
        let inputs = self.inputs.len();
        let last = self.actions.len().saturating_sub(1);
        let actions = (self.actions.into_iter().enumerate())
            .map(|(i, (base, from, action))| pb::FileAction {
                // Actions are numbered after the op's inputs.
                input: match base {
                    Base::Scratch => -1,
                    Base::Input(n) => n as i64,
                    Base::Action(n) => (inputs + n) as i64,
                },
                secondary_input: from.map_or(-1, |n| n as i64),
                output: if i == last { 0 } else { -1 },
                action: Some(action),
            })
            .collect();
        self.llb.add(
            pb::Op {
                inputs: self.inputs,
                op: Some(pb::op::Op::File(pb::FileOp { actions })),
                platform: platform(),
            },
            name,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file op `digest` of `def`.
    fn file_op(def: &pb::Definition, digest: &str) -> (pb::Op, pb::FileOp) {
        use prost::Message;
        use sha2::Digest;
        let bytes = (def.def.iter())
            .find(|b| format!("sha256:{:x}", sha2::Sha256::digest(b)) == digest)
            .expect("the op is in the definition");
        let op = pb::Op::decode(bytes.as_slice()).unwrap();
        match &op.op {
            Some(pb::op::Op::File(f)) => (op.clone(), f.clone()),
            other => panic!("not a file op: {other:?}"),
        }
    }

    #[test]
    fn a_batch_is_one_op_whose_actions_build_on_each_other_and_share_inputs() {
        let mut llb = Llb::default();
        let base = llb.image("debian:bookworm");
        let runtime = llb.image("example.invalid/runtime:1");
        let mut files = llb.files(&base);
        files.copy(&runtime, "/a", "/usr/local/bin/a", Some(0o755), None);
        files.copy(&runtime, "/b", "/usr/local/bin/b", Some(0o755), None);
        files.mkfile("/etc/x/y.toml", b"y", 0o644, Some((1000, 1000)));
        let result = files.finish("three files");
        let def = llb.definition(&result);
        let (op, f) = file_op(&def, result.digest());
        // The base and the runtime once, however many actions read it.
        assert_eq!(op.inputs.len(), 2);
        let inputs: Vec<i64> = f.actions.iter().map(|a| a.input).collect();
        // The first action reads the base (input 0); each later one the action before it,
        // numbered after the two inputs.
        assert_eq!(inputs, [0, 2, 3, 4]);
        let secondary: Vec<i64> = f.actions.iter().map(|a| a.secondary_input).collect();
        assert_eq!(secondary, [1, 1, -1, -1]);
        let outputs: Vec<i64> = f.actions.iter().map(|a| a.output).collect();
        assert_eq!(
            outputs,
            [-1, -1, -1, 0],
            "only the last action is the op's output"
        );
    }

    #[test]
    fn on_scratch_the_first_action_reads_nothing() {
        let mut llb = Llb::default();
        let mut files = llb.files(&State::scratch());
        files.mkdir(("/etc", 0o755, None), false);
        files.mkfile("/etc/a", b"a", 0o644, None);
        let result = files.finish("on scratch");
        let def = llb.definition(&result);
        let (op, f) = file_op(&def, result.digest());
        assert!(op.inputs.is_empty());
        let inputs: Vec<i64> = f.actions.iter().map(|a| a.input).collect();
        assert_eq!(inputs, [-1, 0, 1]);
    }
}
