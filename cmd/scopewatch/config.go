package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/scopewatch/scopewatch/internal/config"
	"gopkg.in/yaml.v3"
)

func runConfig(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: scopewatch config check FILE | scopewatch config default", errUsage)
	}
	switch args[0] {
	case "-h", "--help", "help":
		fmt.Fprintln(stderr, "usage: scopewatch config check [--print] FILE | scopewatch config default")
		return flag.ErrHelp
	case "default":
		fs := newFlagSet("config default", stderr)
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		_, err := stdout.Write(config.DefaultYAML())
		return err
	case "check":
		fs := newFlagSet("config check", stderr)
		show := fs.Bool("print", false, "print the effective configuration (password redacted)")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		if fs.NArg() != 1 {
			return fmt.Errorf("%w: scopewatch config check [--print] FILE", errUsage)
		}
		c, err := config.Load(fs.Arg(0), os.LookupEnv)
		if err != nil {
			return err
		}
		if *show {
			return printConfig(stdout, c.Redacted())
		}
		fmt.Fprintf(stdout, "%s: ok\n", fs.Arg(0))
		return nil
	default:
		return fmt.Errorf("%w: unknown config action %q (want check or default)", errUsage, args[0])
	}
}

func printConfig(w io.Writer, c config.Config) error {
	out, err := yaml.Marshal(c)
	if err != nil {
		return fmt.Errorf("print config: %w", err)
	}
	_, err = w.Write(out)
	return err
}
