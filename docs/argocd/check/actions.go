package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"time"

	lua "github.com/yuin/gopher-lua"
	"sigs.k8s.io/yaml"
)

// The verbs shipped in ../actions/<verb>/action.lua, in the order the document lists them.
var verbs = []string{"promote", "promote-full", "pause", "resume", "rollback", "abort", "verify"}

// nowPlaceholder stands, in an expected output, for a requestedAt the action set to now.
const nowPlaceholder = "<now>"

type actionTests struct {
	DiscoveryTests []struct {
		InputPath string `json:"inputPath"`
		Result    []struct {
			Name     string `json:"name"`
			Disabled bool   `json:"disabled,omitempty"`
		} `json:"result"`
	} `json:"discoveryTests"`
	ActionTests []struct {
		Action               string `json:"action"`
		InputPath            string `json:"inputPath"`
		ExpectedOutputPath   string `json:"expectedOutputPath,omitempty"`
		ExpectedErrorMessage string `json:"expectedErrorMessage,omitempty"`
	} `json:"actionTests"`
}

// checkActions runs ../actions/action_test.yaml and checks that the document embeds every
// action script and the discovery script.
func checkActions(dir, doc string, report func(bool, string, string)) {
	actionsDir := filepath.Join(dir, "actions")
	raw, err := os.ReadFile(filepath.Join(actionsDir, "action_test.yaml"))
	if err != nil {
		fatal(err)
	}
	var tests actionTests
	if err := yaml.UnmarshalStrict(raw, &tests); err != nil {
		fatal(fmt.Errorf("action_test.yaml: %w", err))
	}
	discovery, err := os.ReadFile(filepath.Join(actionsDir, "discovery.lua"))
	if err != nil {
		fatal(err)
	}
	for _, tc := range tests.DiscoveryTests {
		name := "discovery " + tc.InputPath
		obj, err := readObject(filepath.Join(actionsDir, tc.InputPath))
		if err != nil {
			report(false, name, err.Error())
			continue
		}
		got, err := runDiscovery(string(discovery), obj)
		if err != nil {
			report(false, name, err.Error())
			continue
		}
		var want []string
		for _, r := range tc.Result {
			want = append(want, fmt.Sprintf("%s(disabled=%v)", r.Name, r.Disabled))
		}
		sort.Strings(want)
		report(reflect.DeepEqual(got, want), name, fmt.Sprintf("got %v, want %v", got, want))
	}
	tested := map[string]bool{}
	for _, tc := range tests.ActionTests {
		tested[tc.Action] = true
		name := fmt.Sprintf("action %s on %s", tc.Action, tc.InputPath)
		obj, err := readObject(filepath.Join(actionsDir, tc.InputPath))
		if err != nil {
			report(false, name, err.Error())
			continue
		}
		got, err := runActionFile(filepath.Join(actionsDir, tc.Action, "action.lua"), obj)
		if tc.ExpectedErrorMessage != "" {
			ok := err != nil && strings.Contains(err.Error(), tc.ExpectedErrorMessage)
			report(ok, name, fmt.Sprintf("error %v, want %q", err, tc.ExpectedErrorMessage))
			continue
		}
		if err != nil {
			report(false, name, err.Error())
			continue
		}
		if err := replaceNow(got); err != nil {
			report(false, name, err.Error())
			continue
		}
		want, err := readObject(filepath.Join(actionsDir, tc.ExpectedOutputPath))
		if err != nil {
			report(false, name, err.Error())
			continue
		}
		ok := reflect.DeepEqual(normalize(got), normalize(want))
		gotYAML, _ := yaml.Marshal(got)
		report(ok, name, map[bool]string{true: "output as expected", false: "got:\n" + string(gotYAML)}[ok])
	}
	var untested []string
	for _, v := range verbs {
		if !tested[v] {
			untested = append(untested, v)
		}
	}
	report(len(untested) == 0, "action tests", fmt.Sprintf("verbs without a test: %v", untested))

	if doc == "" {
		return
	}
	ok, detail := embedsAt(doc, "discovery.lua: |", "", string(discovery))
	report(ok, filepath.Base(doc)+" discovery.lua", detail)
	for _, v := range verbs {
		script, err := os.ReadFile(filepath.Join(actionsDir, v, "action.lua"))
		if err != nil {
			fatal(err)
		}
		ok, detail := embedsAt(doc, "action.lua: |", "- name: "+v, string(script))
		report(ok, filepath.Base(doc)+" "+v, detail)
	}
}

// readObject decodes a JSON or YAML object.
func readObject(path string) (map[string]any, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	obj := map[string]any{}
	if err := yaml.Unmarshal(raw, &obj); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return obj, nil
}

// newActionState is a Lua state as Argo CD makes one for an action: package, base, table and a
// safe os library with date and time only, a one-second deadline.
func newActionState() (*lua.LState, context.CancelFunc, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.OsLibName, lua.OpenOs},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), NRet: 0, Protect: true}, lua.LString(lib.name)); err != nil {
			l.Close()
			return nil, nil, err
		}
	}
	// Argo CD's "safe" os: only date and time.
	full := l.GetGlobal("os").(*lua.LTable)
	safe := l.NewTable()
	safe.RawSetString("date", full.RawGetString("date"))
	safe.RawSetString("time", full.RawGetString("time"))
	l.SetGlobal("os", safe)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	l.SetContext(ctx)
	return l, func() { cancel(); l.Close() }, nil
}

// runActionFile runs an action script on obj and returns the object it returns.
func runActionFile(path string, obj map[string]any) (map[string]any, error) {
	script, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	l, done, err := newActionState()
	if err != nil {
		return nil, err
	}
	defer done()
	l.SetGlobal("obj", toLua(l, obj))
	if err := l.DoString(string(script)); err != nil {
		// The message the script raised (what Argo CD shows), without the traceback.
		if apiErr, ok := err.(*lua.ApiError); ok && apiErr.Object != nil {
			return nil, fmt.Errorf("%s", apiErr.Object.String())
		}
		return nil, err
	}
	ret, ok := l.Get(-1).(*lua.LTable)
	if !ok {
		return nil, fmt.Errorf("the action returned a %s, not a table", l.Get(-1).Type())
	}
	out, ok := fromLua(ret, obj).(map[string]any)
	if !ok {
		return nil, fmt.Errorf("the action returned no object")
	}
	return out, nil
}

// runDiscovery runs the discovery script and returns its actions as sorted
// "name(disabled=bool)" strings.
func runDiscovery(script string, obj map[string]any) ([]string, error) {
	l, done, err := newActionState()
	if err != nil {
		return nil, err
	}
	defer done()
	l.SetGlobal("obj", toLua(l, obj))
	if err := l.DoString(script); err != nil {
		return nil, err
	}
	ret, ok := l.Get(-1).(*lua.LTable)
	if !ok {
		return nil, fmt.Errorf("discovery returned a %s, not a table", l.Get(-1).Type())
	}
	var got []string
	var bad error
	ret.ForEach(func(k, v lua.LValue) {
		t, ok := v.(*lua.LTable)
		if !ok {
			bad = fmt.Errorf("action %s is a %s, not a table", k, v.Type())
			return
		}
		disabled := t.RawGetString("disabled") == lua.LTrue
		got = append(got, fmt.Sprintf("%s(disabled=%v)", k.String(), disabled))
	})
	sort.Strings(got)
	return got, bad
}

// fromLua turns a Lua value back into an object, as Argo CD does: a table with an array part
// is an array; an empty table is an array where the input had one (Lua cannot tell), else an
// object.
func fromLua(v lua.LValue, orig any) any {
	switch v := v.(type) {
	case *lua.LNilType:
		return nil
	case lua.LBool:
		return bool(v)
	case lua.LString:
		return string(v)
	case lua.LNumber:
		return float64(v)
	case *lua.LTable:
		origArray, isArray := orig.([]any)
		if v.MaxN() > 0 || (isArray && v.Len() == 0 && isEmpty(v)) {
			var out []any
			for i := 1; i <= v.MaxN(); i++ {
				var o any
				if i-1 < len(origArray) {
					o = origArray[i-1]
				}
				out = append(out, fromLua(v.RawGetInt(i), o))
			}
			if out == nil {
				out = []any{}
			}
			return out
		}
		origMap, _ := orig.(map[string]any)
		out := map[string]any{}
		v.ForEach(func(k, item lua.LValue) {
			out[k.String()] = fromLua(item, origMap[k.String()])
		})
		return out
	default:
		return v.String()
	}
}

func isEmpty(t *lua.LTable) bool {
	empty := true
	t.ForEach(func(lua.LValue, lua.LValue) { empty = false })
	return empty
}

// replaceNow puts the placeholder in place of a status.migration.request.requestedAt within a
// minute of now (the action writes os.date), failing when it is not such a time.
func replaceNow(obj map[string]any) error {
	status, _ := obj["status"].(map[string]any)
	migration, _ := status["migration"].(map[string]any)
	request, _ := migration["request"].(map[string]any)
	at, ok := request["requestedAt"].(string)
	if !ok {
		return nil
	}
	t, err := time.Parse(time.RFC3339, at)
	if err != nil {
		return fmt.Errorf("requestedAt %q is not RFC 3339: %w", at, err)
	}
	if d := time.Since(t); d < -time.Minute || d > time.Minute {
		return fmt.Errorf("requestedAt %q is not now", at)
	}
	request["requestedAt"] = nowPlaceholder
	return nil
}

// normalize makes numbers comparable whatever their decoded type.
func normalize(v any) any {
	switch v := v.(type) {
	case map[string]any:
		out := map[string]any{}
		for k, item := range v {
			out[k] = normalize(item)
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i, item := range v {
			out[i] = normalize(item)
		}
		return out
	case int:
		return float64(v)
	case int64:
		return float64(v)
	default:
		return v
	}
}
