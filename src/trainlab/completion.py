"""Shell completion for bash and zsh: `trainlab completion bash|zsh` prints the script (install:
`eval "$(trainlab completion bash)"` in ~/.bashrc, or zsh in ~/.zshrc); the script asks
`trainlab __complete LINE [CUR]` for candidates, one per line. It completes verbs, a group's
options (`model=`, also after a sweep's comma), config keys from the composed config (`trainer.
max_epochs=`, with the options already on the line), train's flags, configs' GROUP/OPTION;
other arguments (run folders) are left to the shell's file completion. No torch import."""

from __future__ import annotations

import shlex
import sys

BASH = r"""# trainlab completion for bash: eval "$(trainlab completion bash)"
_trainlab_complete() {
    local line="${COMP_LINE:0:$COMP_POINT}" cur="${COMP_WORDS[COMP_CWORD]}"
    local IFS=$'\n'
    COMPREPLY=($(trainlab __complete "$line" "$cur" 2>/dev/null))
    if [[ ${#COMPREPLY[@]} -eq 1 && ${COMPREPLY[0]} == *[=.,/] ]]; then
        compopt -o nospace
    fi
}
complete -o default -F _trainlab_complete trainlab
"""

ZSH = r"""# trainlab completion for zsh: eval "$(trainlab completion zsh)"
_trainlab_complete() {
    local -a found open
    found=("${(@f)$(trainlab __complete "${BUFFER[1,$CURSOR]}" 2>/dev/null)}")
    open=(${(M)found:#*[=.,/]})
    found=(${found:#*[=.,/]})
    (( ${#open} )) && compadd -Q -S '' -- $open
    (( ${#found} )) && compadd -Q -- $found
    (( ${#open} + ${#found} )) || _files
}
(( $+functions[compdef] )) || { autoload -Uz compinit && compinit; }
compdef _trainlab_complete trainlab
"""

SCRIPTS = {"bash": BASH, "zsh": ZSH}
TRAIN_FLAGS = ("-m", "--multirun", "--cfg", "--config-dir", "--help", "--hydra-help", "--info")


def script(args: list[str]) -> int:
    shell = args[0] if args else ""
    if shell not in SCRIPTS:
        print(
            "error: trainlab completion SHELL: bash or zsh; install with "
            'eval "$(trainlab completion bash)" in ~/.bashrc (or zsh in ~/.zshrc)',
            file=sys.stderr,
        )
        return 2
    print(SCRIPTS[shell], end="")
    return 0


def query(args: list[str]) -> int:
    """`trainlab __complete LINE [CUR]`: LINE is the command line up to the cursor; CUR, from
    bash, is the part of the last word bash replaces (bash splits words at = and :), and each
    candidate is printed without what comes before it."""
    if not args:
        return 2
    line = args[0]
    try:
        words = shlex.split(line)
    except ValueError:  # an open quote
        words = line.split()
    if not line or line[-1].isspace():
        words.append("")
    words = words[1:]  # the command itself
    try:
        found = candidates(words) if words else []
    except Exception:  # (a project folder that is not there, a YAML that does not parse)
        found = []  # nothing to offer beats a traceback under the cursor
    word = words[-1] if words else ""
    cut = 0
    if len(args) > 1 and args[1] and word.endswith(args[1]):
        cut = len(word) - len(args[1])
    for candidate in found:
        print(candidate[cut:])
    return 0


def candidates(words: list[str]) -> list[str]:
    """What may come in place of words[-1], the word being typed, after words[:-1]."""
    from trainlab.cli import VERBS

    *before, word = words
    if not before:
        return [v for v in (*VERBS, "--help", "--version") if v.startswith(word)]
    verb = before[0]
    if verb == "train":
        return _train(before[1:], word)
    if verb == "configs":
        from trainlab import configs

        refs = [o.ref for group in configs.options().values() for o in group.values()]
        groups = [g for g in configs.options() if g]
        return sorted(r for r in {*refs, *groups} if r.startswith(word))
    if verb == "completion":
        return [s for s in SCRIPTS if s.startswith(word)]
    return []  # run folders, files: the shell's own completion


def _train(before: list[str], word: str) -> list[str]:
    from trainlab import configs

    if word.startswith("-"):
        return [f for f in TRAIN_FLAGS if f.startswith(word)]
    groups = {g: list(options) for g, options in configs.options().items() if g}
    key, eq, value = word.partition("=")
    group = key.lstrip("+~")
    if eq:
        if group not in groups:
            return []
        done, _, last = value.rpartition(",")  # a sweep: model=mlp,cnn
        head = f"{key}={done}," if done else f"{key}="
        return [head + o for o in groups[group] if o.startswith(last)]
    found = [f"{g}=" for g in groups if g.startswith(word)]
    keys = _keys([w for w in before if "=" in w and not w.startswith("-")])
    if "." in word:
        found += [f"{k}=" for k in keys if k.startswith(word)]
    else:
        tops = {k.split(".")[0] + ("." if "." in k else "=") for k in keys}
        found += sorted(t for t in tops if t.startswith(word))  # model= and model.
    return found


def _keys(overrides: list[str]) -> list[str]:
    """The composed config's leaf keys (dotted) with the given overrides; those that do not
    compose are left out (the defaults' keys, at worst)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import DictConfig

    from trainlab.config import CONF_DIR

    def leaves(node, prefix: str) -> list[str]:
        if isinstance(node, DictConfig):
            return [k for name in node for k in leaves(node._get_node(name), f"{prefix}{name}.")]
        return [prefix[:-1]]

    for attempt in (overrides, []):
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                return sorted(leaves(compose("train", overrides=attempt), ""))
        except Exception:
            continue
        finally:
            GlobalHydra.instance().clear()
    return []
