package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/scopewatch/scopewatch/inference"
)

const bundleUsage = `usage: scopewatch bundle <subcommand> [flags]

subcommands:
  keygen --out PREFIX [--comment TEXT]
        write an ed25519 signing key pair: PREFIX.key (private, mode 0600)
        and PREFIX.pub (one base64 public key; give it to devices)
  seal --key KEY DIR
        list every file of DIR with its sha256 in manifest.json, sign the
        manifest with KEY and rewrite it
  verify [--keys PATH] [--allow-unsigned] [--no-onnx] [--ort-lib PATH] DIR|TAR
        check a bundle as a device does: manifest, signature, files, head,
        and (unless --no-onnx) the ONNX model's names, shapes and a smoke
        inference; print what was checked
  pack [--keys PATH] [--allow-unsigned] DIR OUT.tar
        verify DIR, then write it as a deterministic tar

--keys is a public key file or a folder of *.pub files; the default is
/etc/scopewatch/keys, else models/keys of the source tree.
`

func runBundle(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, bundleUsage)
		return fmt.Errorf("%w: missing subcommand", errUsage)
	}
	switch args[0] {
	case "-h", "--help", "help":
		fmt.Fprint(stdout, bundleUsage)
		return nil
	case "keygen":
		return bundleKeygen(args[1:], stdout, stderr)
	case "seal":
		return bundleSeal(args[1:], stdout, stderr)
	case "verify":
		return bundleVerify(args[1:], stdout, stderr)
	case "pack":
		return bundlePack(args[1:], stdout, stderr)
	default:
		fmt.Fprint(stderr, bundleUsage)
		return fmt.Errorf("%w: unknown subcommand %q", errUsage, args[0])
	}
}

// parseInterleaved lets flags follow the positional arguments
// (`bundle seal models/default --key k`), which flag.Parse alone does not.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, fmt.Errorf("%w: %v", errUsage, err)
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func bundleKeygen(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bundle keygen", stderr)
	out := fs.String("out", "", "path prefix of the key pair (writes PREFIX.key and PREFIX.pub)")
	comment := fs.String("comment", "", "label written into the key files (default: the prefix's base name)")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if *out == "" || len(pos) != 0 {
		return fmt.Errorf("%w: want bundle keygen --out PREFIX", errUsage)
	}
	if dir := filepath.Dir(*out); dir != "." {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("keygen: %w", err)
		}
	}
	pub, priv, err := inference.GenerateKey(nil)
	if err != nil {
		return err
	}
	if err := inference.WriteKeyPair(*out, *comment, pub, priv); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "private key: %s.key (keep secret, never commit)\npublic key:  %s.pub\n%s\n", *out, *out, inference.FormatPublicKey(pub))
	return nil
}

func bundleSeal(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bundle seal", stderr)
	keyPath := fs.String("key", "", "private key file (from bundle keygen)")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if *keyPath == "" || len(pos) != 1 {
		return fmt.Errorf("%w: want bundle seal --key KEY DIR", errUsage)
	}
	priv, err := inference.LoadPrivateKey(*keyPath)
	if err != nil {
		return err
	}
	m, err := inference.SealBundle(pos[0], priv)
	if err != nil {
		return err
	}
	// Open what was written with only the sealing key trusted: proves the
	// manifest and its signature read back as sealed.
	b, err := inference.OpenBundle(pos[0], inference.BundleOptions{TrustedKeys: []ed25519.PublicKey{priv.Public().(ed25519.PublicKey)}})
	if err != nil {
		return fmt.Errorf("sealed bundle does not verify: %w", err)
	}
	defer b.Close()
	fmt.Fprintf(stdout, "sealed %s: %s %s, %d files, signer %s\n", pos[0], m.Name, m.Version, len(m.Files), m.Signer)
	return nil
}

// openBundleArgs parses a subcommand's arguments, which must be npos
// positional ones (usage says which), and opens and verifies the bundle
// named by the first. It also returns where the trusted keys came from.
func openBundleArgs(fs *flag.FlagSet, cf bundleCheckFlags, args []string, npos int, usage string) (*inference.Bundle, []string, string, error) {
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return nil, nil, "", err
	}
	if len(pos) != npos {
		return nil, nil, "", fmt.Errorf("%w: want %s", errUsage, usage)
	}
	opts, keysFrom, err := cf.options()
	if err != nil {
		return nil, nil, "", err
	}
	b, err := inference.OpenBundle(pos[0], opts)
	if err != nil {
		return nil, nil, "", err
	}
	return b, pos, keysFrom, nil
}

func bundleVerify(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bundle verify", stderr)
	cf := addBundleCheckFlags(fs)
	noONNX := fs.Bool("no-onnx", false, "skip loading the ONNX model (names, shapes, smoke inference)")
	ortLib := fs.String("ort-lib", "", ortLibFlagHelp)
	b, pos, keysFrom, err := openBundleArgs(fs, cf, args, 1, "bundle verify [--keys PATH] DIR|TAR")
	if err != nil {
		return err
	}
	defer b.Close()
	m := b.Manifest
	w := func(label, format string, a ...any) {
		fmt.Fprintf(stdout, "  %-10s %s\n", label, fmt.Sprintf(format, a...))
	}
	fmt.Fprintf(stdout, "bundle %s\n", pos[0])
	w("manifest", "ok: %s %s (%s), created %s, sha256 %s", m.Name, m.Version, m.Architecture, m.Created.Format("2006-01-02T15:04:05Z07:00"), b.ManifestSHA256)
	switch {
	case b.Signer != nil:
		w("signature", "ok: ed25519 by %s, trusted (keys from %s)", inference.FormatPublicKey(b.Signer), keysFrom)
	case m.Signature != "":
		w("signature", "NOT TRUSTED: intact, by %s, but no trusted keys configured (--allow-unsigned)", m.Signer)
	default:
		w("signature", "NONE: unsigned bundle accepted (--allow-unsigned)")
	}
	names := slices.Sorted(maps.Keys(m.Files))
	var sizes []string
	for _, n := range names {
		if st, err := os.Stat(filepath.Join(b.Dir, n)); err == nil {
			sizes = append(sizes, fmt.Sprintf("%s (%s)", n, humanBytes(st.Size())))
		}
	}
	w("files", "ok: %d listed, sha256 match, none unlisted: %s", len(names), strings.Join(sizes, ", "))
	in := m.Input
	w("input", "%q %dx%d %s %s, value = (pixel*%g - mean %v) / std %v", in.Name, in.Width, in.Height, in.Layout, in.Color, in.Scale, in.Mean, in.Std)
	if b.Head != nil {
		w("head", "ok: %s, Dense(%d->%d) ReLU, Dense(%d->%d) softmax, classes %q", *m.Head, b.Head.InputDim(), b.Head.Hidden(), b.Head.Hidden(), b.Head.Classes(), m.Classes)
	} else {
		w("head", "none: probabilities from ONNX output %q, classes %q", *m.Outputs.Probabilities, m.Classes)
	}
	w("threshold", "p(%s) >= %g", inference.PositiveClass, m.Threshold)
	if m.Baseline != "" {
		w("baseline", "%s", m.Baseline)
	} else {
		w("baseline", "none (drift detection needs one)")
	}
	if *noONNX {
		w("onnx", "not checked (--no-onnx)")
		return nil
	}
	lib, err := inference.InitORT(*ortLib)
	if err != nil {
		return err
	}
	c, err := inference.NewClassifier(b, inference.ClassifierOptions{Batch: 1, Workers: 1})
	if err != nil {
		return fmt.Errorf("%s: %w", inference.BackboneFile, err)
	}
	if err := c.Close(); err != nil {
		return err
	}
	w("onnx", "ok: %s loads in ONNX Runtime (%s), input %q and output %q match the manifest, smoke inference ran", inference.BackboneFile, lib, in.Name, m.Outputs.Features)
	return nil
}

func bundlePack(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bundle pack", stderr)
	cf := addBundleCheckFlags(fs)
	b, pos, _, err := openBundleArgs(fs, cf, args, 2, "bundle pack [--keys PATH] DIR OUT.tar")
	if err != nil {
		return err
	}
	defer b.Close()
	out := pos[1]
	tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".tmp-")
	if err != nil {
		return fmt.Errorf("pack: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := inference.PackBundle(b, tmp); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("pack: %w", err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return fmt.Errorf("pack: %w", err)
	}
	st, err := os.Stat(out)
	if err != nil {
		return fmt.Errorf("pack: %w", err)
	}
	fmt.Fprintf(stdout, "packed %s (%s %s) into %s, %s\n", pos[0], b.Manifest.Name, b.Manifest.Version, out, humanBytes(st.Size()))
	return nil
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	default:
		return fmt.Sprintf("%d B", n)
	}
}
