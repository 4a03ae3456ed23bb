package testutil

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// RequireNoCgo fails the test if the package in the current folder depends,
// directly or indirectly, on SQLite, OpenCV or ONNX Runtime, or on any
// package outside the standard library that uses cgo: the packages that
// call it promise to build and run with CGO_ENABLED=0 (the fleet side, the
// pure-Go tests).
func RequireNoCgo(t *testing.T) {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go command not found:", err)
	}
	cmd := exec.Command(goTool, "list", "-deps", "-f", "{{.ImportPath}} {{.Standard}} {{len .CgoFiles}}", ".")
	// With cgo enabled, so that files importing "C" count.
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	refused := []string{"github.com/mattn/go-sqlite3", "gocv.io/", "github.com/yalue/onnxruntime_go"}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			t.Fatalf("go list: unexpected line %q", line)
		}
		path, std, cgoFiles := f[0], f[1] == "true", f[2] != "0"
		for _, r := range refused {
			if strings.HasPrefix(path, r) {
				t.Errorf("depends on %s", path)
			}
		}
		if path == "C" || (!std && cgoFiles) {
			t.Errorf("depends on cgo package %s", path)
		}
	}
}
