//go:build linux

package daemon

import (
	"image"
	"testing"

	"github.com/scopewatch/scopewatch/inference"
)

func TestCleanFileMappings(t *testing.T) {
	smaps := `00400000-00410000 r--p 00000000 fe:00 10346752                           /usr/bin/scopewatch
Rss:                  64 kB
Anonymous:             0 kB
VmFlags: rd mr mw me dw sd
00410000-00b7d000 r-xp 00010000 fe:00 10346752                           /usr/bin/scopewatch
Rss:                7824 kB
Anonymous:             0 kB
01259000-017c0000 rw-p 00e59000 fe:00 10346752                           /usr/bin/scopewatch
Rss:                5524 kB
Anonymous:           124 kB
7fe51153c000-7fe5137c9000 r-xp 0013c000 fe:00 1234                       /opt/ort/libonnxruntime.so.1
Rss:               19404 kB
Anonymous:             0 kB
7fe513f2d000-7fe513fad000 r--p 00b2d000 fe:00 1234                       /opt/ort/libonnxruntime.so.1
Rss:                 512 kB
Anonymous:           512 kB
7fe57c200000-7fe57c4f2000 r--p 00000000 fe:00 99                         /usr/lib/libgdal.so
Anonymous:             0 kB
7fe600000000-7fe600100000 r--p 00000000 fe:00 98                         /var/lib/scopewatch/model.bin
Anonymous:             0 kB
7fe600100000-7fe600200000 r--p 00000000 fe:00 97                         /usr/lib/libgone.so.2 (deleted)
Anonymous:             0 kB
7fe600200000-7fe600300000 rw-s 00000000 fe:00 96                         /usr/lib/libshm.so
Anonymous:             0 kB
7fe600300000-7fe600400000 rw-p 00000000 00:00 0 
Anonymous:          1024 kB
7ffd1c3a1000-7ffd1c3a5000 r--p 00000000 00:00 0                          [vvar]
Anonymous:             0 kB
`
	want := func(p string) bool { return p == "/usr/bin/scopewatch" || isSharedObject(p) }
	got := cleanFileMappings([]byte(smaps), want)
	exp := []mapping{
		{0x00400000, 0x00410000, 10346752, "/usr/bin/scopewatch"},              // executable header
		{0x00410000, 0x00b7d000, 10346752, "/usr/bin/scopewatch"},              // executable code
		{0x7fe51153c000, 0x7fe5137c9000, 1234, "/opt/ort/libonnxruntime.so.1"}, // library code
		{0x7fe57c200000, 0x7fe57c4f2000, 99, "/usr/lib/libgdal.so"},            // library, name ending in .so
	}
	if len(got) != len(exp) {
		t.Fatalf("got %d mappings %x, want %x", len(got), got, exp)
	}
	for i := range exp {
		if got[i] != exp[i] {
			t.Errorf("mapping %d: %x, want %x", i, got[i], exp[i])
		}
	}
}

func TestIsSharedObject(t *testing.T) {
	for p, want := range map[string]bool{
		"/usr/lib/libc.so.6":                true,
		"/usr/lib/libgdal.so":               true,
		"/opt/libonnxruntime.so.1.30.0":     true,
		"/var/lib/scopewatch/scopewatch.db": false,
		"/models/default/backbone.onnx":     false,
		"/so.d/model":                       false,
	} {
		if got := isSharedObject(p); got != want {
			t.Errorf("isSharedObject(%q) = %v, want %v", p, got, want)
		}
	}
}

// The test binary links the same libraries as the daemon: releasing their
// pages must lower its file-backed resident set and leave it working.
func TestReleaseFilePages(t *testing.T) {
	before, after, err := releaseFilePages()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("RssFile %d kB -> %d kB", before, after)
	if before == 0 || after >= before {
		t.Errorf("RssFile %d kB -> %d kB: nothing released", before, after)
	}
	// Library code and constants come back on use: decode an image with
	// OpenCV (libopencv_imgcodecs, libpng, zlib).
	m, err := inference.NewDecoder(inference.DecodeOptions{}).Decode(encodePNG(t, image.NewRGBA(image.Rect(0, 0, 8, 6))))
	if err != nil {
		t.Fatalf("decode after release: %v", err)
	}
	defer m.Close()
	if m.Cols() != 8 || m.Rows() != 6 {
		t.Errorf("decoded %dx%d after release, want 8x6", m.Cols(), m.Rows())
	}
}
