// Command scopewatch is the malaria-microscope daemon and its tools: it
// classifies blood-cell images, watches for drift against the model's
// test-set baseline, and moves results, alerts and feedback over MQTT.
//
// main only parses the subcommand, installs signal handling and hands a
// context to the subcommand; every subcommand lives in its own file and is
// listed in the commands table below.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// command is one subcommand. run gets the arguments after the subcommand's
// name; it must return when ctx is cancelled.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

// commands lists every subcommand, in the order usage shows them.
var commands = []command{
	{"baseline", "run the model on its held-out test set and write baseline.json into the bundle", runBaseline},
	{"bench", "measure pipeline throughput against bare ONNX Runtime", runBench},
	{"bundle", "create signing keys, seal, verify and pack model bundles", runBundle},
	{"classify", "classify cell images (files or folders) with a model bundle", runClassify},
	{"collect", "receive feedback samples and labels into a training dataset; export it", runCollect},
	{"config", "check a configuration file or print the commented default", runConfig},
	{"drift", "replay score streams through the drift detectors; evaluate them", runDrift},
	{"feedback", "label feedback samples (publish an operator label)", runFeedback},
	{"fields", "segment and classify whole thin-smear fields offline (per-cell rows, per-slide parasitemia)", runFields},
	{"model", "the serving model and its rollout on a running daemon; roll back to the previous model", runModel},
	{"serve", "run the daemon: inbox, HTTP uploads, slides, SQLite, MQTT", runServe},
	{"synth", "generate synthetic cell crops or thin-smear fields", runSynth},
	{"tune", "run hyperparameter studies, redraw their reports, cache features for the built-in head", runTune},
}

// lookupCommand finds a subcommand by name.
func lookupCommand(name string) (command, bool) {
	for _, c := range commands {
		if c.name == name {
			return c, true
		}
	}
	return command{}, false
}

// errUsage marks errors whose message already explains the usage problem;
// main exits 2 for them, as flag does.
var errUsage = errors.New("usage")

// errSomeFailed is returned by commands that processed every input but some
// inputs failed; the details were already reported.
var errSomeFailed = errors.New("some inputs failed")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	cmd, ok := lookupCommand(args[0])
	if !ok {
		fmt.Fprintf(stderr, "scopewatch: unknown command %q\n\n", args[0])
		usage(stderr)
		return 2
	}
	err := cmd.run(ctx, args[1:], stdout, stderr)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "scopewatch %s: %v\n", args[0], err)
		return 2
	case errors.Is(err, errSomeFailed):
		return 1
	default:
		fmt.Fprintf(stderr, "scopewatch %s: %v\n", args[0], err)
		return 1
	}
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: scopewatch <command> [flags]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "commands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run 'scopewatch <command> -h' for the command's flags.")
}

// newFlagSet returns a flag set that reports errors instead of exiting, so
// that run can map them to exit codes.
func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("scopewatch "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}
