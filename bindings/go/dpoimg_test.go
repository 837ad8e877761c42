package dpoimg

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	bundle = "../../tests/assets/tiny-bundle"
	r4     = "../../tests/assets/adapters/r4.safetensors"
)

func openTest(t *testing.T) *Engine {
	t.Helper()
	e, err := Open(bundle, &EngineOptions{Device: "cpu", IntraThreads: 1, SkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func pixels(t *testing.T, e *Engine, opts GenerateOptions) []byte {
	t.Helper()
	im, err := e.Generate(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	img, err := im.Image(0)
	if err != nil {
		t.Fatal(err)
	}
	return img.Pix
}

func TestVersionMatchesHeader(t *testing.T) {
	if Version() != HeaderVersion() || Version() == "" {
		t.Fatalf("library %q, header %q", Version(), HeaderVersion())
	}
}

func TestOpenErrors(t *testing.T) {
	_, err := Open("/nonexistent", nil)
	if !errors.Is(err, ErrBundle) {
		t.Fatalf("want a bundle error, got %v", err)
	}
	var de *Error
	if !errors.As(err, &de) || !strings.Contains(de.Message, "bundle.json") {
		t.Fatalf("message should name bundle.json: %v", err)
	}
	_, err = Open(bundle, &EngineOptions{Device: "tpu", SkipVerify: true})
	if !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("want invalid argument, got %v", err)
	}
}

func TestGenerateIsDeterministicAndEncodesPNG(t *testing.T) {
	e := openTest(t)
	opts := GenerateOptions{Prompt: "a red circle", Seed: 7, Steps: 3, Count: 2}
	im, err := e.Generate(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	if im.Len() != 2 {
		t.Fatalf("want 2 images, got %d", im.Len())
	}
	img, err := im.Image(0)
	if err != nil {
		t.Fatal(err)
	}
	if img.Width != 16 || img.Height != 16 || img.Stride != 48 || len(img.Pix) != 768 {
		t.Fatalf("unexpected geometry %+v", img)
	}
	if !bytes.Equal(img.Pix, pixels(t, e, GenerateOptions{Prompt: "a red circle", Seed: 7, Steps: 3, Count: 2})) {
		t.Fatal("same seed and settings gave different pixels")
	}
	png, err := im.PNG(1)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) || !bytes.Contains(png, []byte("a red circle")) {
		t.Fatal("PNG lacks its signature or its provenance")
	}
	if _, err := im.Image(2); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("out-of-range index: %v", err)
	}
	if _, err := e.Generate(context.Background(), GenerateOptions{Prompt: "x", Width: 17}); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("bad width: %v", err)
	}
}

func TestConcurrentGenerateOnOneEngine(t *testing.T) {
	e := openTest(t)
	want := make([][]byte, 4)
	for i := range want {
		want[i] = pixels(t, e, GenerateOptions{Prompt: "threads", Seed: uint64(i), Steps: 2})
	}
	var wg sync.WaitGroup
	got := make([][]byte, 4)
	errs := make([]error, 4)
	for i := range got {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			im, err := e.Generate(context.Background(), GenerateOptions{Prompt: "threads", Seed: uint64(i), Steps: 2,
				Progress: func(Progress) bool { return true }})
			if err != nil {
				errs[i] = err
				return
			}
			defer im.Close()
			img, err := im.Image(0)
			got[i], errs[i] = img.Pix, err
		}(i)
	}
	wg.Wait()
	for i := range got {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("goroutine %d: pixels differ from a lone call", i)
		}
	}
}

func TestContextCancellation(t *testing.T) {
	e := openTest(t)
	ctx, cancel := context.WithCancel(context.Background())
	steps := 0
	_, err := e.Generate(ctx, GenerateOptions{Prompt: "cancel", Steps: 10, Progress: func(p Progress) bool {
		if p.Stage == StageDenoising {
			steps++
			if p.Step == 2 {
				cancel()
			}
		}
		return true
	}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("want context.Canceled, got %v", err)
	}
	if steps >= 10 {
		t.Fatalf("ran all %d steps despite the cancel", steps)
	}
	if _, err := e.Generate(ctx, GenerateOptions{Prompt: "already cancelled"}); !errors.Is(err, context.Canceled) {
		t.Fatalf("pre-cancelled context: %v", err)
	}
	_, err = e.Generate(context.Background(), GenerateOptions{Prompt: "stop", Steps: 4,
		Progress: func(p Progress) bool { return p.Stage != StageDenoising }})
	if !errors.Is(err, ErrCancelled) {
		t.Fatalf("progress returning false: %v", err)
	}
}

func TestProgressPanicIsReraisedInGo(t *testing.T) {
	e := openTest(t)
	defer func() {
		if r := recover(); r != "boom" {
			t.Fatalf("want the callback's panic re-raised, got %v", r)
		}
	}()
	e.Generate(context.Background(), GenerateOptions{Prompt: "panic", Steps: 2,
		Progress: func(Progress) bool { panic("boom") }})
	t.Fatal("Generate returned normally")
}

func TestAdapters(t *testing.T) {
	e := openTest(t)
	a, err := e.LoadAdapter(r4, "")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if a.Name != "r4" || a.Rank != 4 || len(a.SHA256) != 64 {
		t.Fatalf("unexpected info %+v", a.AdapterInfo)
	}
	if _, err := e.LoadAdapter(r4, "r4"); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate name: %v", err)
	}
	list, err := e.Adapters()
	if err != nil || len(list) != 1 || list[0].Name != "r4" {
		t.Fatalf("list %v, %v", list, err)
	}
	byName := pixels(t, e, GenerateOptions{Prompt: "lora", Steps: 2, Adapters: []AdapterRef{{Name: "r4", Strength: 0.8}}})
	byHandle := pixels(t, e, GenerateOptions{Prompt: "lora", Steps: 2, Adapters: []AdapterRef{{Adapter: a, Strength: 0.8}}})
	base := pixels(t, e, GenerateOptions{Prompt: "lora", Steps: 2})
	if !bytes.Equal(byName, byHandle) || bytes.Equal(byName, base) {
		t.Fatal("adapter by name and by handle should agree and differ from the base model")
	}
	if err := e.UnloadAdapter("r4"); err != nil {
		t.Fatal(err)
	}
	if err := e.UnloadAdapter("r4"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second unload: %v", err)
	}
	if _, err := e.Generate(context.Background(), GenerateOptions{Prompt: "x", Adapters: []AdapterRef{{Name: "r4", Strength: 1}}}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unloaded name: %v", err)
	}
}

func TestLoggerAndClose(t *testing.T) {
	var mu sync.Mutex
	var lines []string
	if err := SetLogger(LogInfo, func(l LogLevel, m string) {
		mu.Lock()
		lines = append(lines, m)
		mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	e := openTest(t)
	if err := SetLogger(LogOff, nil); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	joined := strings.Join(lines, "\n")
	mu.Unlock()
	if !strings.Contains(joined, "engine ready") {
		t.Fatalf("no 'engine ready' among %q", joined)
	}
	e.Close()
	e.Close() // idempotent
	if _, err := e.Generate(context.Background(), GenerateOptions{Prompt: "closed"}); !errors.Is(err, ErrMisuse) {
		t.Fatalf("generate on a closed engine: %v", err)
	}
}

func TestRewardScoresGeneratedImages(t *testing.T) {
	e := openTest(t)
	im, err := e.Generate(context.Background(), GenerateOptions{Prompt: "a red circle", Seed: 3, Steps: 2, Count: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	a, _ := im.Image(0)
	b, _ := im.Image(1)
	r, err := OpenReward("../../tests/assets/reward-tiny", &EngineOptions{Device: "cpu", IntraThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	s, err := r.Score("a red circle", []Image{a, b, a})
	if err != nil {
		t.Fatal(err)
	}
	if len(s) != 3 || s[0] != s[2] || s[0] == s[1] {
		t.Fatalf("scores %v", s)
	}
	if _, err := r.Score("x", nil); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("no images: %v", err)
	}
	if _, err := OpenReward(bundle, nil); !errors.Is(err, ErrBundle) {
		t.Fatalf("model bundle as reward bundle: %v", err)
	}
	r.Close()
	if _, err := r.Score("x", []Image{a}); !errors.Is(err, ErrMisuse) {
		t.Fatalf("closed: %v", err)
	}
}

func TestFinetuneAndCancel(t *testing.T) {
	dir := t.TempDir()
	cfg := func(run, extra string) string {
		return `{"bundle": "` + bundle + `", "data": "../../tests/assets/train/prefs.jsonl", "output": "` +
			dir + "/" + run + `", "cache_dir": "` + dir + `/cache", "steps": 2, "threads": 1, "lr": 0.001` + extra + `}`
	}
	var steps int
	path, err := Finetune(context.Background(), cfg("a", ""), 10*time.Millisecond, func(p FinetuneProgress) {
		if p.Stage == FinetuneStep {
			steps++
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(path, "/a/adapter.safetensors") || steps == 0 {
		t.Fatalf("path %q, %d step reports", path, steps)
	}
	e := openTest(t)
	ad, err := e.LoadAdapter(path, "tuned")
	if err != nil {
		t.Fatal(err)
	}
	ad.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Finetune(ctx, cfg("b", ""), 0, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled before start: %v", err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := Finetune(ctx, cfg("c", `, "grad_accum": 60000`), 0, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("cancelled mid-run: %v", err)
	}
	if _, err := Finetune(context.Background(), `{"stepz": 1}`, 0, nil); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("bad settings: %v", err)
	}
}
