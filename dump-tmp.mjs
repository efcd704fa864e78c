import { ClassicLevel } from "classic-level";
const db = new ClassicLevel(process.argv[2], { valueEncoding: "utf8" });
let n = 0;
for await (const [k, v] of db.iterator({ gte: process.argv[3], lt: process.argv[3] + "~" })) { console.log(k, v.length); console.log(v); if (++n >= Number(process.argv[4] ?? 1)) break; }
await db.close();
