import { z } from "zod";
import { APP_ERRORS, STANDARD_ERRORS, type AppErrorCode, type StandardErrorName } from "./errors.js";
import { BUILTIN_METHODS, type RpcRegistry } from "./registry.js";
import { addressSchema, amountSchema, hash32Schema } from "./schemas.js";

type JsonSchema = Record<string, unknown>;

interface NamedType {
  title: string;
  description: string;
  pattern: string;
}

function isSchema(value: unknown): value is JsonSchema {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Wire (input) form, since that is what integrators send and receive. */
function jsonSchemaOf(schema: z.ZodType): JsonSchema {
  return z.toJSONSchema(schema, { io: "input", unrepresentable: "any" }) as JsonSchema;
}

function cell(text: string): string {
  return text.replace(/\|/g, "\\|").replace(/\r?\n/g, "<br>");
}

class TypeNamer {
  readonly named = new Map<string, NamedType>();

  constructor() {
    // The shared types' own descriptions, before any use of them adds a field-specific one.
    for (const shared of [amountSchema, addressSchema, hash32Schema]) this.label(jsonSchemaOf(shared));
  }

  label(schema: unknown): string {
    if (!isSchema(schema)) return "any";
    if (typeof schema.title === "string") {
      if (!this.named.has(schema.title)) {
        this.named.set(schema.title, {
          title: schema.title,
          description: typeof schema.description === "string" ? schema.description : "",
          pattern: typeof schema.pattern === "string" ? schema.pattern : "",
        });
      }
      return schema.title;
    }
    if (Array.isArray(schema.enum)) return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
    if ("const" in schema) return JSON.stringify(schema.const);
    for (const key of ["anyOf", "oneOf"] as const) {
      const options = schema[key];
      if (Array.isArray(options)) return options.map((o) => this.label(o)).join(" | ");
    }
    if (typeof schema.$ref === "string") return schema.$ref.replace(/^#\/\$defs\//, "");
    const type = schema.type;
    if (type === "array") return `${this.wrap(this.label(schema.items))}[]`;
    if (type === "object") {
      if (isSchema(schema.properties)) return `{ ${this.fields(schema).join(", ")} }`;
      if (isSchema(schema.additionalProperties)) return `Record<string, ${this.label(schema.additionalProperties)}>`;
      return "object";
    }
    if (Array.isArray(type)) return type.join(" | ");
    if (typeof type === "string") return type === "integer" ? "number" : type;
    return "any";
  }

  /** `name: Type` entries; `?` marks optional fields. */
  fields(schema: JsonSchema, withDescriptions = false): string[] {
    const props = isSchema(schema.properties) ? schema.properties : {};
    const required = new Set(Array.isArray(schema.required) ? schema.required : []);
    return Object.entries(props).map(([name, prop]) => {
      const optional = required.has(name) ? "" : "?";
      const base = `${name}${optional}: ${this.label(prop)}`;
      // A named type's field shows its own description only when it says more than the type's.
      const typeDescription = isSchema(prop) && typeof prop.title === "string" ? this.named.get(prop.title)?.description : undefined;
      const desc = isSchema(prop) && typeof prop.description === "string" && prop.description !== typeDescription;
      return withDescriptions && desc ? `${base} — ${String(prop.description)}` : base;
    });
  }

  private wrap(label: string): string {
    return label.includes(" | ") ? `(${label})` : label;
  }
}

interface MethodRow {
  name: string;
  params: z.ZodType;
  result: z.ZodType | undefined;
  description: string;
}

function methodTable(rows: MethodRow[], namer: TypeNamer): string {
  const lines = ["| Method | Params | Result | Description |", "| --- | --- | --- | --- |"];
  for (const row of rows) {
    const params = namer.fields(jsonSchemaOf(row.params), true).map((f) => `\`${f}\``);
    const result = row.result === undefined ? "" : `\`${namer.label(jsonSchemaOf(row.result))}\``;
    lines.push(
      `| \`${row.name}\` | ${cell(params.join("\n")) || "—"} | ${cell(result) || "—"} | ${cell(row.description)} |`,
    );
  }
  return lines.join("\n");
}

/** Markdown table of the standard and application error codes. */
export function renderErrorTable(): string {
  const lines = ["| Code | Name | Meaning |", "| --- | --- | --- |"];
  for (const name of Object.keys(STANDARD_ERRORS) as StandardErrorName[]) {
    const e = STANDARD_ERRORS[name];
    lines.push(`| ${e.code} | \`${name}\` | ${cell(e.description)} |`);
  }
  for (const name of Object.keys(APP_ERRORS) as AppErrorCode[]) {
    lines.push(`| ${APP_ERRORS[name].code} | \`${name}\` | ${cell(APP_ERRORS[name].description)} |`);
  }
  return lines.join("\n");
}

export interface RenderDocsOptions {
  /** Include auth/subscribe/unsubscribe. Default true. */
  builtins?: boolean;
  /** Heading level for sections. Default 2. */
  headingLevel?: number;
}

/** Markdown reference for registered methods, events, the shared types they use, and error codes. */
export function renderMethodDocs(registry: RpcRegistry, options: RenderDocsOptions = {}): string {
  const h = "#".repeat(options.headingLevel ?? 2);
  const namer = new TypeNamer();
  const methods: MethodRow[] = [
    ...(options.builtins === false ? [] : BUILTIN_METHODS.map((m) => ({ ...m }))),
    ...registry.methods().map((m) => ({ name: m.name, params: m.params, result: m.result, description: m.description })),
  ];
  const sections = [`${h} Methods`, "", methodTable(methods, namer)];

  const events = registry.events();
  if (events.length > 0) {
    const lines = ["| Event | Payload | Description |", "| --- | --- | --- |"];
    for (const e of events) {
      const js = jsonSchemaOf(e.payload);
      const payload =
        js.type === "object" && isSchema(js.properties)
          ? namer.fields(js, true).map((f) => `\`${f}\``).join("\n")
          : `\`${namer.label(js)}\``;
      lines.push(`| \`${e.name}\` | ${cell(payload)} | ${cell(e.description)} |`);
    }
    sections.push("", `${h} Events`, "", lines.join("\n"));
  }

  if (namer.named.size > 0) {
    const lines = ["| Type | Wire format | Pattern |", "| --- | --- | --- |"];
    for (const t of namer.named.values()) {
      lines.push(`| \`${t.title}\` | ${cell(t.description)} | ${t.pattern === "" ? "" : `\`${cell(t.pattern)}\``} |`);
    }
    sections.push("", `${h} Types`, "", lines.join("\n"));
  }

  sections.push("", `${h} Errors`, "", renderErrorTable(), "");
  return sections.join("\n");
}
