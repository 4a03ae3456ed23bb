package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/scopewatch/scopewatch/internal/config"
	"github.com/scopewatch/scopewatch/internal/daemon"
	"gopkg.in/yaml.v3"
)

func runConfig(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: scopewatch config check FILE | scopewatch config default", errUsage)
	}
	switch args[0] {
	case "-h", "--help", "help":
		fmt.Fprintln(stderr, "usage: scopewatch config check [--print] [--no-load] FILE | scopewatch config default")
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
		noLoad := fs.Bool("no-load", false, "check the file only; do not open the model bundle and ONNX Runtime it names")
		pos, err := parseInterleaved(fs, args[1:])
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			return fmt.Errorf("%w: scopewatch config check [--print] [--no-load] FILE", errUsage)
		}
		c, err := config.Load(pos[0], os.LookupEnv)
		if err != nil {
			return err
		}
		if *show {
			return printConfig(stdout, c.Redacted())
		}
		if *noLoad {
			fmt.Fprintf(stdout, "%s: ok (model not loaded)\n", pos[0])
			return nil
		}
		// Load the model as serve would: a missing bundle, a refused
		// signature or a missing ONNX Runtime fails here, not at start.
		version, err := daemon.CheckModel(c, slog.New(slog.DiscardHandler))
		if err != nil {
			return fmt.Errorf("%s: %w", pos[0], err)
		}
		fmt.Fprintf(stdout, "%s: ok (model %s loads from %s)\n", pos[0], version, c.Model.Path)
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
