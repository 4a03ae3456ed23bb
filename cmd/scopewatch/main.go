// Command scopewatch is the malaria-microscope daemon and its tools: it
// classifies blood-cell images, watches for drift against the model's
// test-set baseline, and moves results, alerts and feedback over MQTT.
//
// main only parses the subcommand, installs signal handling and hands a
// context to the subcommand; every subcommand lives in its own file and is
// registered in the commands table.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"syscall"
)

// command is one subcommand. run gets the arguments after the subcommand's
// name; it must return when ctx is cancelled.
type command struct {
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

var commands = map[string]command{}

func register(name, summary string, run func(ctx context.Context, args []string, stdout, stderr io.Writer) error) {
	if _, dup := commands[name]; dup {
		panic("scopewatch: command registered twice: " + name)
	}
	commands[name] = command{summary: summary, run: run}
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
	cmd, ok := commands[args[0]]
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
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, commands[n].summary)
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
