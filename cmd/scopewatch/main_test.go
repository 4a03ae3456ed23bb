package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestCommandTable checks that every subcommand has one entry in the table,
// is shown by usage, and answers -h with exit status 0.
func TestCommandTable(t *testing.T) {
	seen := map[string]bool{}
	for _, c := range commands {
		if c.name == "" || c.summary == "" || c.run == nil {
			t.Errorf("incomplete command entry %+v", c)
		}
		if seen[c.name] {
			t.Errorf("command %q listed twice", c.name)
		}
		seen[c.name] = true
	}
	var u bytes.Buffer
	usage(&u)
	for _, c := range commands {
		if !strings.Contains(u.String(), "\n  "+c.name+" ") {
			t.Errorf("usage does not show %q:\n%s", c.name, u.String())
		}
	}
	for _, c := range commands {
		t.Run(c.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(context.Background(), []string{c.name, "-h"}, &stdout, &stderr); code != 0 {
				t.Errorf("scopewatch %s -h: exit %d, want 0\nstdout:\n%s\nstderr:\n%s", c.name, code, stdout.String(), stderr.String())
			}
			if stdout.Len()+stderr.Len() == 0 {
				t.Errorf("scopewatch %s -h printed nothing", c.name)
			}
		})
	}
}
