"""A synthetic subject world with known geometry (docs/synthetic.md).

`db3d.synth.world`: procedural objects (SDF + colours) of a few classes with distinct front and
back markings, their renders, the toy prior's training images and synthetic subject folders;
`db3d.synth.shapes`: the primitives and the class recipes. Import from the submodules: this
package stays light (no torch import at `import db3d.synth`).
"""
