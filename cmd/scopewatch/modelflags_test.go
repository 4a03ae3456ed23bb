package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestModelFlagsShared checks that the commands opening a model take the
// shared model flags, and --batch, --sessions and --threads where they
// apply.
func TestModelFlagsShared(t *testing.T) {
	common := []string{"-model", "-ort-lib", "-keys", "-allow-unsigned"}
	for _, tc := range []struct {
		args []string
		more []string
	}{
		{[]string{"classify"}, []string{"-batch", "-sessions", "-threads"}},
		{[]string{"fields"}, []string{"-batch"}},
		{[]string{"bench"}, []string{"-batch", "-sessions", "-threads"}},
		{[]string{"baseline"}, nil},
		{[]string{"tune", "features"}, []string{"-batch"}},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(context.Background(), append(tc.args, "-h"), &stdout, &stderr); code != 0 {
			t.Fatalf("%v -h: exit %d\n%s", tc.args, code, stderr.String())
		}
		for _, f := range append(common, tc.more...) {
			if h := stderr.String(); !strings.Contains(h, "  "+f+" ") && !strings.Contains(h, "  "+f+"\n") {
				t.Errorf("%v -h does not list %s:\n%s", tc.args, f, stderr.String())
			}
		}
	}
}

// TestModelFlagsBatchChecked checks that --batch below 1 is refused before
// any model is opened.
func TestModelFlagsBatchChecked(t *testing.T) {
	for _, cmd := range []string{"classify", "fields"} {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), []string{cmd, "--batch", "0", "--model", t.TempDir(), "x.png"}, &stdout, &stderr)
		if code != 2 || !strings.Contains(stderr.String(), "--batch must be at least 1, got 0") {
			t.Errorf("%s --batch 0: exit %d, stderr %q; want 2 and the --batch error", cmd, code, stderr.String())
		}
	}
}
