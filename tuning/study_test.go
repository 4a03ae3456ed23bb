package tuning

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const exampleStudy = `name: optimizer-vs-lr
objective:
  command: ["python3", "trial.py"]
  metric: val_loss
  direction: minimize
parameters:
  - {name: optimizer, role: scientific, type: categorical, values: [adam, sgd]}
  - {name: lr, role: nuisance, type: float, min: 1e-4, max: 1e-1, log: true}
  - {name: dropout, role: nuisance, type: float, min: 0, max: 0.5}
  - {name: batch_size, role: fixed, value: 248}
budget: {trials: 60, explore: 16, parallel: 2, max_epochs: 10}
pruning: {method: asha, grace_epochs: 1, reduction: 3}
replicates: {finalists: 3, seeds: 3}
seed: 1
`

func TestDecodeExample(t *testing.T) {
	s, err := Decode(strings.NewReader(exampleStudy))
	if err != nil {
		t.Fatal(err)
	}
	if s.Name != "optimizer-vs-lr" || s.Objective.Metric != "val_loss" || s.Seed != 1 {
		t.Fatalf("decoded %+v", s)
	}
	if got := len(s.Searched()); got != 3 {
		t.Fatalf("searched parameters = %d, want 3", got)
	}
	lr := s.Parameters[1]
	if !lr.Log || *lr.Min != 1e-4 || *lr.Max != 0.1 {
		t.Fatalf("lr = %+v, min %v max %v", lr, *lr.Min, *lr.Max)
	}
	if got := s.Fixed()["batch_size"]; got != 248 {
		t.Fatalf("fixed batch_size = %v (%T), want 248", got, got)
	}
	if s.Budget.Parallel != 2 || s.Budget.Explore != 16 || s.Pruning.Method != PruneASHA {
		t.Fatalf("budget %+v pruning %+v", s.Budget, s.Pruning)
	}
}

func TestDecodeDefaults(t *testing.T) {
	s, err := Decode(strings.NewReader(`name: plain
objective: {builtin: head, metric: val_accuracy, direction: maximize}
parameters:
  - {name: lr, role: nuisance, type: float, min: 1e-5, max: 1e-2, log: true}
  - {name: layers, role: nuisance, type: int, min: 1, max: 4}
budget: {trials: 20}
`))
	if err != nil {
		t.Fatal(err)
	}
	want := Budget{Trials: 20, Explore: 6, Parallel: 1, MaxEpochs: 1, Overlap: 2}
	if s.Budget != want {
		t.Fatalf("budget = %+v, want %+v", s.Budget, want)
	}
	if s.Pruning.Method != PruneNone || s.Replicates != (Replicates{}) {
		t.Fatalf("pruning %+v replicates %+v", s.Pruning, s.Replicates)
	}
}

// TestDecodeRefuses checks that every bad study is refused with an error
// that names the field a user has to fix.
func TestDecodeRefuses(t *testing.T) {
	base := func(params string, rest ...string) string {
		s := "name: t\nobjective: {command: [./trial], metric: value, direction: minimize}\nparameters:\n" + params + "budget: {trials: 10, max_epochs: 4}\n"
		return s + strings.Join(rest, "")
	}
	lr := "  - {name: lr, role: nuisance, type: float, min: 0.001, max: 0.1, log: true}\n"
	cases := []struct {
		name, yaml, want string
	}{
		{"empty", "", "empty"},
		{"unknown key", base(lr, "colour: blue\n"), "colour"},
		{"unknown nested key", base("  - {name: lr, role: nuisance, type: float, min: 0, max: 1, step: 2}\n"), "step"},
		{"two documents", base(lr) + "---\nname: u\n", "more than one"},
		{"bad name", strings.Replace(base(lr), "name: t", "name: 'My Study'", 1), "name"},
		{"no objective", "name: t\nparameters:\n" + lr + "budget: {trials: 3}\n", "objective"},
		{"both objectives", strings.Replace(base(lr), "command: [./trial]", "command: [./trial], builtin: head", 1), "objective"},
		{"unknown builtin", strings.Replace(base(lr), "command: [./trial]", "builtin: tree", 1), "objective.builtin"},
		{"empty program", strings.Replace(base(lr), "[./trial]", "['']", 1), "objective.command[0]"},
		{"no metric", strings.Replace(base(lr), "metric: value, ", "", 1), "objective.metric"},
		{"no direction", strings.Replace(base(lr), ", direction: minimize", "", 1), "objective.direction"},
		{"bad direction", strings.Replace(base(lr), "minimize", "lowest", 1), "objective.direction"},
		{"no parameters", base(""), "parameters"},
		{"only fixed", base("  - {name: epochs, role: fixed, value: 3}\n"), "every parameter is fixed"},
		{"duplicate name", base(lr + lr), "parameters[1] (lr).name"},
		{"bad role", base("  - {name: lr, role: tuned, type: float, min: 0, max: 1}\n"), "parameters[0] (lr).role"},
		{"min above max", base("  - {name: lr, role: nuisance, type: float, min: 2, max: 1}\n"), "parameters[0] (lr).min"},
		{"min equals max", base("  - {name: lr, role: nuisance, type: float, min: 1, max: 1}\n"), "fixed"},
		{"log with zero min", base("  - {name: lr, role: nuisance, type: float, min: 0, max: 1, log: true}\n"), "log-scale"},
		{"log with negative min", base("  - {name: lr, role: nuisance, type: float, min: -1, max: 1, log: true}\n"), "min > 0"},
		{"missing max", base("  - {name: lr, role: nuisance, type: float, min: 0}\n"), "min and max"},
		{"fractional int", base("  - {name: n, role: nuisance, type: int, min: 0.5, max: 3}\n"), "whole-number"},
		{"fixed without value", base(lr + "  - {name: epochs, role: fixed}\n"), "parameters[1] (epochs).value"},
		{"fixed with range", base(lr + "  - {name: epochs, role: fixed, value: 3, min: 1}\n"), "takes only"},
		{"searched with value", base("  - {name: lr, role: nuisance, type: float, min: 0, max: 1, value: 0.5}\n"), ".value"},
		{"no type", base("  - {name: lr, role: nuisance, min: 0, max: 1}\n"), ".type"},
		{"bad type", base("  - {name: lr, role: nuisance, type: double, min: 0, max: 1}\n"), ".type"},
		{"one categorical value", base("  - {name: opt, role: nuisance, type: categorical, values: [adam]}\n"), "at least 2"},
		{"duplicate categorical value", base("  - {name: opt, role: nuisance, type: categorical, values: [adam, adam]}\n"), "values[1]"},
		{"non-scalar value", base("  - {name: opt, role: nuisance, type: categorical, values: [adam, [sgd]]}\n"), "values[1]"},
		{"categorical with range", base("  - {name: opt, role: nuisance, type: categorical, values: [a, b], min: 1}\n"), "categorical one has values"},
		{"searched batch size", base("  - {name: batch_size, role: nuisance, type: int, min: 8, max: 256}\n"), "batch_size is not searched"},
		{"scientific batch size", base("  - {name: batch_size, role: scientific, type: categorical, values: [32, 64]}\n"), "throughput"},
		{"scientific float", base("  - {name: wd, role: scientific, type: float, min: 0, max: 1}\n"), "categorical or int"},
		{"scientific int too wide", base("  - {name: n, role: scientific, type: int, min: 1, max: 40}\n"), "at most 16"},
		{"zero trials", strings.Replace(base(lr), "trials: 10", "trials: 0", 1), "budget.trials"},
		{"explore above trials", strings.Replace(base(lr), "trials: 10", "trials: 10, explore: 11", 1), "budget.explore"},
		{"parallel too high", strings.Replace(base(lr), "trials: 10", "trials: 10, parallel: 65", 1), "budget.parallel"},
		{"overlap too high", strings.Replace(base(lr), "trials: 10", "trials: 10, overlap: 65", 1), "budget.overlap"},
		{"negative epochs", strings.Replace(base(lr), "max_epochs: 4", "max_epochs: -1", 1), "budget.max_epochs"},
		{"bad pruning", base(lr, "pruning: {method: median}\n"), "pruning.method"},
		{"grace too long", base(lr, "pruning: {method: asha, grace_epochs: 4}\n"), "pruning.grace_epochs"},
		{"reduction one", base(lr, "pruning: {method: hyperband, reduction: 1}\n"), "pruning.reduction"},
		{"one replicate seed", base(lr, "replicates: {finalists: 2, seeds: 1}\n"), "replicates.seeds"},
		{"too many finalists", base(lr, "replicates: {finalists: 11, seeds: 3}\n"), "replicates.finalists"},
		{"wrong type of field", base(lr, "seed: one\n"), "line 6"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Decode(strings.NewReader(c.yaml))
			if err == nil {
				t.Fatalf("accepted:\n%s", c.yaml)
			}
			if !errors.Is(err, ErrInvalidStudy) {
				t.Errorf("error %v does not wrap ErrInvalidStudy", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not mention %q", err, c.want)
			}
		})
	}
}

func TestLoadNamesFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "study.yaml")
	if err := os.WriteFile(path, []byte("name: t\nbogus: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Load(path)
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("Load error %v does not name %s", err, path)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}

// FuzzDecodeStudy checks that no study file, however malformed, panics the
// decoder, and that what it accepts passes validation again.
func FuzzDecodeStudy(f *testing.F) {
	f.Add(exampleStudy)
	f.Add("name: t\nparameters: [{name: a, role: fixed, value: [1, 2]}]\n")
	f.Add("name: [\n")
	f.Fuzz(func(t *testing.T, in string) {
		s, err := Decode(strings.NewReader(in))
		if err != nil {
			return
		}
		if err := s.Validate(); err != nil {
			t.Fatalf("accepted study fails validation: %v", err)
		}
		if len(s.Searched()) == 0 {
			t.Fatal("accepted study searches nothing")
		}
	})
}

// The shipped example studies are valid, and the optimizer study is the
// seed's first experiment: optimizer scientific, learning rate nuisance, the
// rest fixed.
func TestExampleStudies(t *testing.T) {
	paths, err := filepath.Glob("examples/*.yaml")
	if err != nil || len(paths) < 2 {
		t.Fatalf("examples: %v %v", paths, err)
	}
	bb, err := Load("examples/blackbox/branin.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := filepath.Abs("examples/blackbox/blackbox"); bb.Objective.Command[0] != want {
		t.Fatalf("relative trial program resolved to %q, want %q", bb.Objective.Command[0], want)
	}
	for _, p := range paths {
		s, err := Load(p)
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		if s.Objective.Builtin != BuiltinHead {
			t.Errorf("%s: not on the built-in head", p)
		}
		roles := map[string]string{}
		for _, prm := range s.Parameters {
			roles[prm.Name] = prm.Role
		}
		if roles["optimizer"] != RoleScientific || roles["lr"] != RoleNuisance || len(s.Fixed()) < 3 {
			t.Errorf("%s: roles %v", p, roles)
		}
	}
}
