package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/scopewatch/scopewatch/inference"
	"github.com/scopewatch/scopewatch/internal/retune"
	"github.com/scopewatch/scopewatch/tuning"
)

// tuneRetune is `tune retune`: flags to retune.Config, the run, and a
// summary a person reads. Refusals exit non-zero with the reasons.
func tuneRetune(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("tune retune", stderr)
	var data, nominal listFlag
	fs.Var(&data, "data", "labelled feedback folder (labels.csv: path,label,slide[,device]); repeat for several")
	fs.Var(&nominal, "nominal", "labelled folder of the incumbent's own domain, so that the new model is trained and tested on it too; repeat for several")
	out := fs.String("out", "", "output folder: snapshot, features, study, decision.json and, when accepted, bundle/ (rerun with the same inputs to resume)")
	keyPath := fs.String("key", "", "fleet private key to sign the new bundle (from bundle keygen)")
	studyPath := fs.String("study", retune.StudyNetwork, retuneStudyHelp)
	recipe := fs.String("recipe", "", recipeHelp)
	python := fs.String("python", defaultPython, pythonHelp)
	ledger := fs.String("ledger", "", "sealed-test ledger (default $XDG_STATE_HOME/scopewatch/sealed-tests.jsonl, else ~/.local/state/...)")
	minSamples := fs.Int("min-samples", 200, "fewest labelled images a retune accepts")
	sims := fs.Int("baseline-sims", 0, "drift calibration streams for the new baseline (0: as the incumbent's)")
	mf := addModelFlags(fs, modelFlagOptions{modelHelp: "incumbent bundle folder (default: the shipped default bundle)"})
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(data) == 0 || *out == "" || *keyPath == "" || len(pos) != 0 {
		return fmt.Errorf("%w: want tune retune --model DIR --data DIR [--data DIR ...] [--nominal DIR ...] --out DIR --key FILE [--study network|head|FILE] [--recipe DIR]", errUsage)
	}
	key, err := inference.LoadPrivateKey(*keyPath)
	if err != nil {
		return err
	}
	study, recipeDir, err := retuneStudy(*studyPath, *recipe)
	if err != nil {
		return err
	}
	lp := *ledger
	if lp == "" {
		if lp, err = defaultLedgerPath(); err != nil {
			return err
		}
	}
	clf, bundle, err := mf.open(inference.ClassifierOptions{Engine: inference.EngineOptions{Sessions: throughputSessions(0)}})
	if err != nil {
		return err
	}
	defer bundle.Close()
	defer clf.Close()
	dec, err := retune.Run(ctx, retune.Config{
		Incumbent: bundle, Scorer: clf, Nominal: nominal, Feedback: data, Out: *out, Key: key,
		Ledger: tuning.OpenLedger(lp), Study: study, Recipe: recipeDir, Python: *python, Snapshot: tuning.SnapshotOptions{MinSamples: *minSamples},
		BaselineSims: *sims, Log: slog.New(slog.NewTextHandler(stderr, nil)),
	})
	if dec != nil {
		printDecision(stdout, dec, *out)
	}
	if errors.Is(err, retune.ErrRefused) {
		return fmt.Errorf("%w (see %s)", err, filepath.Join(*out, retune.DecisionFile))
	}
	return err
}

// defaultLedgerPath is the per-user sealed-test ledger: shared by every
// retune a user runs, wherever its output goes.
func defaultLedgerPath() (string, error) {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "scopewatch", "sealed-tests.jsonl"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("%w: --ledger: no XDG_STATE_HOME and no home folder (%v); pass --ledger FILE", errUsage, err)
	}
	return filepath.Join(home, ".local", "state", "scopewatch", "sealed-tests.jsonl"), nil
}

func printDecision(w io.Writer, d *retune.Decision, out string) {
	fmt.Fprintf(w, "snapshot %s: %d images (%d duplicates left out)\n", d.Snapshot, d.Samples, d.Duplicates)
	for _, c := range d.Splits {
		fmt.Fprintf(w, "  %-9s %-5s %5d images %4d slides %5d parasitized\n", c.Domain, c.Split, c.Samples, c.Slides, c.Positive)
	}
	if s := d.Study; s != nil {
		fmt.Fprintf(w, "study %s: %d trials (%d complete, %d pruned, %d failed); chosen trial %d seed %d, %s %.4f\n",
			s.Name, s.Trials, s.Complete, s.Pruned, s.Failed, s.Winner, s.Seed, s.Metric, s.Value)
	}
	if t := d.Test; t != nil {
		fmt.Fprintf(w, "sealed test (threshold %.4f, incumbent %.4f):\n", d.Threshold, t.Incumbent.Threshold)
		line := func(name string, c tuning.Comparison) {
			fmt.Fprintf(w, "  %-10s accuracy %.4f (%.4f-%.4f) vs %.4f (%.4f-%.4f), difference %+.4f (%+.4f to %+.4f); sensitivity %.4f vs %.4f\n",
				name, c.New.Accuracy.Value, c.New.Accuracy.Lo, c.New.Accuracy.Hi, c.Incumbent.Accuracy.Value, c.Incumbent.Accuracy.Lo, c.Incumbent.Accuracy.Hi,
				c.AccuracyDiff.Value, c.AccuracyDiff.Lo, c.AccuracyDiff.Hi, c.New.Sensitivity.Value, c.Incumbent.Sensitivity.Value)
		}
		line("all", *t)
		for _, dom := range []string{retune.DomainNominal, retune.DomainFeedback} {
			if c, ok := d.PerDomain[dom]; ok {
				line(dom, c)
			}
		}
	}
	if d.Accepted {
		fmt.Fprintf(w, "accepted: %s, signed bundle in %s (trained: %s)\n", d.Version, d.Bundle, d.Trained)
		for _, x := range d.Warnings {
			fmt.Fprintf(w, "  warning: %s\n", x)
		}
	} else {
		fmt.Fprintf(w, "refused:\n")
		for _, r := range d.Reasons {
			fmt.Fprintf(w, "  - %s\n", r)
		}
	}
	fmt.Fprintf(w, "report: %s\n", filepath.Join(out, retune.StudyDir, "report.html"))
}

// retuneStudyHelp and recipeHelp are the retune commands' --study and
// --recipe flags.
const (
	retuneStudyHelp = `retune study: "network" (default: the whole network fine-tuned by models/recipe/finetune.py, needs the recipe's Python), "head" (only the head, on the incumbent's features, in Go) or a study file`
	recipeHelp      = "folder holding finetune.py, for the network study (default: models/recipe under the working folder, else share/scopewatch/recipe beside the executable's bin/)"
)

// defaultPython is the interpreter Debian's python3-torch is installed
// for (the README's set-up); a python3 earlier on PATH (a pyenv or venv)
// usually lacks torch.
const defaultPython = "/usr/bin/python3"

const pythonHelp = "Python interpreter with torch, torchvision and onnx, for the network study"

// retuneStudy resolves --study and --recipe.
func retuneStudy(name, recipe string) (*tuning.Study, string, error) {
	study := retune.StudyNamed(name)
	if name == "" {
		study = retune.DefaultStudy()
	}
	if study == nil {
		var err error
		if study, err = tuning.Load(name); err != nil {
			return nil, "", err
		}
	}
	if recipe != "" {
		return study, recipe, nil
	}
	cands := []string{filepath.Join("models", "recipe")}
	if exe, err := os.Executable(); err == nil {
		cands = append(cands, filepath.Join(filepath.Dir(filepath.Dir(exe)), "share", "scopewatch", "recipe"))
	}
	for _, c := range cands {
		if _, err := os.Stat(filepath.Join(c, retune.FinetuneScript)); err == nil {
			return study, c, nil
		}
	}
	// Left empty: a study that needs it says so, naming --recipe.
	return study, "", nil
}
